// The gateway's HTTP API. Every URL is relative to the page, so the console works under a base
// path behind a reverse proxy. The API key (if the gateway wants one) is asked for once and kept
// in this tab's sessionStorage; it goes in the Authorization header, and in the `access_token`
// query parameter only for EventSource, which cannot send headers.

const KEY = "signalflow-gateway.apiKey";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => (value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY)),
};

/** A failed call: the HTTP status and the problem+json body, when there is one. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problemText(status, problem));
    this.status = status;
    this.problem = problem;
  }
}

function problemText(status, problem) {
  if (!problem || typeof problem !== "object") return `HTTP ${status}`;
  const where = problem.line != null ? ` (line ${problem.line}, column ${problem.column})` : "";
  return `${problem.title || "Error"}: ${problem.detail || ""}${where}`;
}

let askForKey = async () => false;

/** `ask(forbidden)` shows the key prompt; it resolves true when a new key was entered. */
export function onKeyNeeded(ask) {
  askForKey = ask;
}

/** Calls the API; answers the parsed JSON body, or throws an ApiError. On 401/403 it asks for
 * the key (unless `ask` is false) and tries again. */
export async function call(method, path, body, { ask = true } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { accept: "application/json" };
    const key = apiKey.get();
    if (key) headers.authorization = `Bearer ${key}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if ((response.status === 401 || response.status === 403) && ask && attempt < 3 && (await askForKey(response.status === 403))) {
      continue;
    }
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!response.ok) throw new ApiError(response.status, json);
    return json;
  }
}

/** The events URL of a computation for EventSource, with the key in the query if there is one. */
export function eventsUrl(id) {
  const url = `computations/${encodeURIComponent(id)}/events`;
  const key = apiKey.get();
  return key ? `${url}?access_token=${encodeURIComponent(key)}` : url;
}

/** The simulator's inventory, or null when the upstream is not the built-in simulator. */
export async function simulatorInventory() {
  try {
    const response = await fetch("_sim/inventory", { headers: { accept: "application/json" } });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}
