# The gateway from Ruby with net/http: create a computation, print its first data points with
# their series' dimensions, drop the connection and resume with Last-Event-ID, then stop it.
require "json"
require "net/http"

GW = URI(ENV.fetch("GATEWAY", "http://127.0.0.1:8080"))
PROGRAM = "data('cpu.utilization').mean(by=['region']).publish('A')"
$dims = {}
$last = nil

def stream(id, count) # prints the points of `count` data events, resuming after $last
  Net::HTTP.start(GW.host, GW.port, read_timeout: 30) do |http|
    request = Net::HTTP::Get.new("/computations/#{id}/events", "accept" => "text/event-stream")
    request["last-event-id"] = $last if $last
    buffer = +""
    http.request(request) do |response|
      response.read_body do |chunk|
        buffer << chunk
        while (event_end = buffer.index("\n\n"))
          event = buffer.slice!(0, event_end + 2).lines(chomp: true).reject(&:empty?).to_h { |l| l.split(": ", 2) }
          $last = event["id"] if event["id"]
          body = event["data"] && JSON.parse(event["data"])
          case event["event"]
          when "metadata"
            own = body["properties"].reject { |k, _| k.start_with?("sf_") || k == "computationId" }
            $dims[body["tsId"]] = own.map { |k, v| "#{k}=#{v}" }.join(" ")
          when "data"
            body["data"].each { |p| puts "data id=#{$last} t=#{body["logicalTimestampMs"]} #{$dims[p["tsId"]]} value=#{p["value"]}" }
            return if (count -= 1).zero?
          end
        end
      end
    end
  end
end

$stdout.sync = true
created = Net::HTTP.post(URI("#{GW}/computations"), { program: PROGRAM, start: "-1m", resolution: "1s" }.to_json, "content-type" => "application/json")
id = JSON.parse(created.body).fetch("id")
stream(id, 3)
puts "resumed after id #{$last}"
stream(id, 2)
stopped = Net::HTTP.start(GW.host, GW.port) { |http| http.delete("/computations/#{id}?reason=example+done") }
raise "stop: HTTP #{stopped.code}" unless stopped.is_a?(Net::HTTPSuccess)
puts "stopped #{id}"
