/**
 * One helper for every call the panel makes: `/aidc/api/<service>/<path>` on this
 * server, relayed by the `aidc.lab` server extension to the hub service as the user.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** How long the panel waits for an answer before it says the platform is not answering. */
export const REQUEST_TIMEOUT_MS = 30000;

/** A failed call, with the message the user should read. */
export class RequestError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/**
 * Call `service`'s `path` through the server extension and return the JSON answer.
 *
 * Rejects with a {@link RequestError} whose message is the service's own (its
 * `{"message": ...}`), or says that the platform did not answer in time.
 */
export async function requestAPI<T>(
  service: string,
  path: string,
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'aidc', 'api', service, path);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      url,
      { ...init, signal: abort.signal },
      settings
    );
  } catch (error) {
    if (abort.signal.aborted) {
      throw new RequestError(
        `the ${service} service did not answer within ${REQUEST_TIMEOUT_MS / 1000} s`,
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
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message =
      (body && typeof body.message === 'string' && body.message) ||
      `${service} answered ${response.status} ${response.statusText}`;
    throw new RequestError(message, response.status);
  }
  return body as T;
}
