/**
 * One helper for every call the panel makes: `/aidc/api/<service>/<path>` on this
 * server, relayed by the `aidc.lab` server extension to the hub service as the user
 * (`/aidc/v2/models/<path>` for the models service's v2 inference).
 *
 * The page's token (the hub's OAuth token that JupyterHub puts in the page config, also
 * kept in this server's cookie) can end while the page stays open: it expires, or it is
 * revoked (`aidc` revocation, the hub's token page). This server then refuses the panel's
 * calls with a 401/403 of its own, not the relay's (the relay marks every answer it
 * makes with `X-Aidc-Relay`). The panel then gets a new token as opening Lab again
 * would (the hub's OAuth redirect, which needs only the hub's own sign-in cookie),
 * keeps it in the page config, and repeats the call once, instead of showing an error.
 */
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { EventStreamParser, IServerEvent } from './sse';

/** The header the relay puts on every answer it makes (aidc.lab.relay.RELAY_HEADER). */
const RELAY_HEADER = 'X-Aidc-Relay';

/** The renewal under way, shared by the calls refused meanwhile. */
let renewal: Promise<boolean> | null = null;

/**
 * Get a new token for this page: load the Lab page as the browser would (this server
 * sends an ended sign-in through the hub's OAuth, which sets a fresh cookie) and take
 * the token from its page config. False when that did not give one (the hub's own
 * sign-in has ended too: its login page came back).
 */
export function renewToken(): Promise<boolean> {
  if (!renewal) {
    renewal = fetchToken().finally(() => {
      renewal = null;
    });
  }
  return renewal;
}

async function fetchToken(): Promise<boolean> {
  try {
    // no-cors: a same-origin read as the browser makes for an image, so that JupyterHub
    // accepts the sign-in cookie without an XSRF token at each step of the redirects (its
    // check for a script's `cors` GET would refuse the cookie and redirect without end);
    // the answer stays readable, since every step is same-origin
    const response = await fetch(URLExt.join(PageConfig.getBaseUrl(), 'lab'), {
      mode: 'no-cors',
      credentials: 'same-origin',
      cache: 'no-store'
    });
    if (!response.ok) {
      return false;
    }
    const page = new DOMParser().parseFromString(await response.text(), 'text/html');
    const config = page.getElementById('jupyter-config-data')?.textContent;
    const token = config ? JSON.parse(config).token : undefined;
    if (typeof token !== 'string') {
      return false;
    }
    PageConfig.setOption('token', token);
    return true;
  } catch (error) {
    console.warn('aidc: could not renew the page token', error);
    return false;
  }
}

/** This server's own refusal of the page's credentials (not a service's, relayed). */
function signedOut(response: Response): boolean {
  return (response.status === 401 || response.status === 403) && !response.headers.has(RELAY_HEADER);
}

/** How long the panel waits for an answer before it says the platform is not answering. */
export const REQUEST_TIMEOUT_MS = 30000;

/** How a call differs from a quick read of a service's API. */
export interface IRequestOptions {
  /** How long to wait for the answer (a deployment answers once its replicas are ready). */
  timeoutMs?: number;
  /** `v2`: the models service's inference endpoints instead of its `api`. */
  api?: 'api' | 'v2';
}

/** A failed call, with the message the user should read. */
export class RequestError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** `fetch` the relay's `/aidc/api/<service>/<path>`; a failure to answer is a RequestError. */
async function call(
  service: string,
  path: string,
  init: RequestInit,
  timeoutMs: number | null,
  api: 'api' | 'v2' = 'api'
): Promise<Response> {
  const url = (settings: ServerConnection.ISettings) =>
    api === 'v2'
      ? URLExt.join(settings.baseUrl, 'aidc', 'v2', service, path)
      : URLExt.join(settings.baseUrl, 'aidc', 'api', service, path);
  const abort = new AbortController();
  const timer = timeoutMs === null ? undefined : setTimeout(() => abort.abort(), timeoutMs);
  if (init.signal) {
    init.signal.addEventListener('abort', () => abort.abort());
  }
  // the settings are made for each try with the page config's token, maybe renewed (the
  // default settings keep the token the page was loaded with)
  const send = () => {
    const settings = ServerConnection.makeSettings({ token: PageConfig.getToken() });
    return ServerConnection.makeRequest(url(settings), { ...init, signal: abort.signal }, settings);
  };
  try {
    const response = await send();
    if (signedOut(response) && (await renewToken())) {
      return await send();
    }
    return response;
  } catch (error) {
    if (abort.signal.aborted && !init.signal?.aborted) {
      throw new RequestError(
        `the ${service} service did not answer within ${(timeoutMs || 0) / 1000} s`,
        0
      );
    }
    throw new RequestError(
      `cannot reach this server (${(error as Error).message}); is it still running?`,
      0
    );
  } finally {
    clearTimeout(timer);
  }
}

/** The service's message in a refusal's body, else its status. */
function refusal(service: string, response: Response, text: string): RequestError {
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  const message = signedOut(response)
    ? 'this page is no longer signed in to the platform: reload it to sign in again'
    : (body && typeof body.message === 'string' && body.message) ||
      `${service} answered ${response.status} ${response.statusText}`;
  return new RequestError(message, response.status);
}

/**
 * Call `service`'s `path` through the server extension and return the answer's text.
 *
 * Rejects with a {@link RequestError} whose message is the service's own (its
 * `{"message": ...}`), or says that the platform did not answer in time.
 */
export async function requestText(
  service: string,
  path: string,
  init: RequestInit = {},
  options: IRequestOptions = {}
): Promise<string> {
  const timeoutMs = options.timeoutMs ?? REQUEST_TIMEOUT_MS;
  const response = await call(service, path, init, timeoutMs, options.api);
  const text = await response.text();
  if (!response.ok) {
    throw refusal(service, response, text);
  }
  return text;
}

/** As {@link requestText}, for the JSON answers of the services' APIs. */
export async function requestAPI<T>(
  service: string,
  path: string,
  init: RequestInit = {},
  options: IRequestOptions = {}
): Promise<T> {
  const text = await requestText(service, path, init, options);
  try {
    return (text ? JSON.parse(text) : null) as T;
  } catch {
    throw new RequestError(`the ${service} service answered something that is not JSON`, 502);
  }
}

/**
 * Follow `service`'s server-sent events at `path` (after the event `lastId`), calling
 * `onEvent` for each, until the service ends the stream or `signal` aborts it. A refused
 * stream rejects with the service's message, as {@link requestAPI} does.
 */
export async function followEvents(
  service: string,
  path: string,
  onEvent: (event: IServerEvent) => void,
  signal: AbortSignal,
  lastId: string | null = null
): Promise<string | null> {
  const headers: Record<string, string> = { Accept: 'text/event-stream' };
  if (lastId) {
    headers['Last-Event-ID'] = lastId;
  }
  const response = await call(service, path, { headers, signal }, null);
  if (!response.ok || !response.body) {
    throw refusal(service, response, await response.text());
  }
  const parser = new EventStreamParser();
  parser.lastId = lastId;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      parser.push(decoder.decode(value, { stream: true })).forEach(onEvent);
    }
  } catch (error) {
    if (!signal.aborted) {
      throw new RequestError(`the event stream broke off (${(error as Error).message})`, 0);
    }
  }
  return parser.lastId;
}
