// The gateway from Go with net/http and bufio: create a computation, print its first data points
// with their series' dimensions, drop the connection and resume with Last-Event-ID, then stop it.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
)

var (
	gw   = env("GATEWAY", "http://127.0.0.1:8080")
	dims = map[string]string{}
	last string
)

func env(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

// stream prints the points of count data events, resuming after last if it is set.
func stream(id string, count int) {
	req, _ := http.NewRequest("GET", gw+"/computations/"+id+"/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	resp, err := http.DefaultClient.Do(req)
	check(err)
	defer resp.Body.Close() // closing it drops the connection
	scanner, event := bufio.NewScanner(resp.Body), ""
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		field, value, _ := strings.Cut(scanner.Text(), ": ")
		switch {
		case field == "id":
			last = value
		case field == "event":
			event = value
		case field == "data" && event == "metadata":
			var m struct {
				TsID       string                 `json:"tsId"`
				Properties map[string]interface{} `json:"properties"`
			}
			check(json.Unmarshal([]byte(value), &m))
			var own []string
			for k, v := range m.Properties {
				if !strings.HasPrefix(k, "sf_") && k != "computationId" {
					own = append(own, fmt.Sprintf("%s=%v", k, v))
				}
			}
			sort.Strings(own)
			dims[m.TsID] = strings.Join(own, " ")
		case field == "data" && event == "data":
			var d struct {
				T    int64 `json:"logicalTimestampMs"`
				Data []struct {
					TsID  string      `json:"tsId"`
					Value json.Number `json:"value"`
				} `json:"data"`
			}
			check(json.Unmarshal([]byte(value), &d))
			for _, p := range d.Data {
				fmt.Printf("data id=%s t=%d %s value=%s\n", last, d.T, dims[p.TsID], p.Value)
			}
			if count--; count == 0 {
				return
			}
		}
	}
	check(scanner.Err())
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func main() {
	body := `{"program": "data('cpu.utilization').mean(by=['region']).publish('A')", "start": "-1m", "resolution": "1s"}`
	resp, err := http.Post(gw+"/computations", "application/json", strings.NewReader(body))
	check(err)
	var created struct{ ID string }
	check(json.NewDecoder(resp.Body).Decode(&created))
	resp.Body.Close()
	stream(created.ID, 3)
	fmt.Println("resumed after id", last)
	stream(created.ID, 2)
	req, _ := http.NewRequest("DELETE", gw+"/computations/"+created.ID+"?reason=example+done", nil)
	resp, err = http.DefaultClient.Do(req)
	check(err)
	if resp.StatusCode != http.StatusOK {
		check(fmt.Errorf("stop: HTTP %d", resp.StatusCode))
	}
	fmt.Println("stopped", created.ID)
}
