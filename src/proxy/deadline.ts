import type { IncomingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Duplex, Readable } from 'node:stream';
import type { Dispatcher } from 'undici';

type Phase = 'queue' | 'upload' | 'headers' | 'body';

const MESSAGES: Record<Phase, (ms: number) => string> = {
  queue: (ms) => `no upstream connection was free for ${ms} ms (every one in use, or connecting)`,
  upload: (ms) => `upstream read none of the request body for ${ms} ms`,
  headers: (ms) => `no response headers within ${ms} ms`,
  body: (ms) => `no response data for ${ms} ms`,
};

const CODES = {
  queue: 'UPSTREAM_QUEUE_TIMEOUT',
  upload: 'UPSTREAM_UPLOAD_STALLED',
  headers: 'UND_ERR_HEADERS_TIMEOUT',
  body: 'UND_ERR_BODY_TIMEOUT',
} as const satisfies Record<Phase, string>;

/**
 * The upstream went quiet, or no connection to it came free, for longer than allowed. For the response phases `code`
 * is undici's; toUpstreamError maps every code of this error to 504 upstream_timeout.
 */
export class UpstreamDeadlineError extends Error {
  readonly code: (typeof CODES)[Phase];
  constructor(phase: Phase, timeoutMs: number) {
    super(MESSAGES[phase](timeoutMs));
    this.name = 'UpstreamDeadlineError';
    this.code = CODES[phase];
  }
}

/**
 * The client read none of the response for as long as the upstream timeout: undici was paused (forward() pauses it
 * while the client's socket is full), so the upstream was not the one waiting. The exchange is still cut, or a
 * client that never reads would hold an upstream connection for good; forward() does not count it as an upstream
 * failure.
 */
export class ClientStalledError extends Error {
  readonly code = 'CLIENT_STALLED';
  constructor(timeoutMs: number) {
    super(`the client read none of the response for ${timeoutMs} ms`);
    this.name = 'ClientStalledError';
  }
}

export interface DeadlineWatch {
  /** An undici interceptor: `pool.compose(watch.interceptor)`. */
  readonly interceptor: Dispatcher.DispatcherComposeInterceptor;
  /** Requests being watched right now. */
  readonly size: number;
  /** Stops the timer; requests still in flight are no longer watched. */
  close(): void;
}

/**
 * Upstream timeouts for every request through a dispatcher, kept by one
 * shared timer instead of undici's per-request timers. undici's
 * `headersTimeout`/`bodyTimeout` allocate timer objects per request that
 * live up to a second; at proxy request rates they are promoted to the old
 * generation as garbage and added ~8 MiB to a busy sidecar's peak RSS
 * (docs/performance.md). Here a request is a list entry and a number.
 *
 * Semantics: a request must get an upstream connection within
 * `queueTimeoutMs` (waiting in the pool's queue while every connection is
 * busy, and connecting: an upstream that hangs on all of them would otherwise
 * hold every later request for as many timeouts as there are requests ahead
 * of it). Then, `timeoutMs` each: while a request body uploads, the upstream
 * must take each chunk (undici pauses the body while the upstream's socket is
 * full) within `timeoutMs` of the previous one; a client that is slow to send
 * is not the upstream's fault and is left to the client-side request timeout.
 * Once the body has been sent, the response headers must arrive; after that,
 * each body chunk must follow the previous one. Checked every `timeoutMs / 4`
 * (at most 1 s), so a timeout fires at most that much late.
 *
 * The watched requests are an intrusive linked list, not a `Set`. A
 * long-lived Set with one entry in and out per request kept every request's
 * objects alive across young-generation GCs: its retired hash tables, already
 * in the old generation, still pointed at the young entries, and the
 * scavenger counts such old-to-young pointers as live until the next full GC.
 * 17 % of everything a sidecar allocated was promoted that way (a plain
 * node/undici proxy: 2 %), which meant full GCs every second under load and
 * 2 ms scavenge pauses. Unlinking overwrites the pointers, so nothing is left
 * behind (docs/performance.md).
 */
export function createDeadlineWatch(timeoutMs: number, queueTimeoutMs: number = timeoutMs): DeadlineWatch {
  const watched = new WatchList();
  const tickMs = Math.min(1000, Math.max(10, Math.floor(timeoutMs / 4)));
  let timer: NodeJS.Timeout | undefined;

  const tick = () => {
    if (watched.size === 0) {
      clearInterval(timer);
      timer = undefined;
      return;
    }
    watched.expireDue(performance.now());
  };

  const watch = {
    timeoutMs,
    queueTimeoutMs,
    add(h: DeadlineHandler) {
      watched.add(h);
      timer ??= setInterval(tick, tickMs).unref();
    },
    delete(h: DeadlineHandler) {
      watched.delete(h);
    },
  };

  return {
    interceptor: (dispatch) => (opts, handler) => {
      const h = new DeadlineHandler(handler, watch, opts.body);
      // The clock runs from now: a request queued for a connection is watched too (phase 'queue').
      h.deadline = performance.now() + queueTimeoutMs;
      watch.add(h);
      return dispatch(opts, h);
    },
    get size() {
      return watched.size;
    },
    close() {
      clearInterval(timer);
      timer = undefined;
      watched.clear();
    },
  };
}

interface Watch {
  readonly timeoutMs: number;
  readonly queueTimeoutMs: number;
  add(h: DeadlineHandler): void;
  delete(h: DeadlineHandler): void;
}

/** The requests being watched: a doubly linked list through the handlers themselves (why not a Set: createDeadlineWatch). */
class WatchList {
  size = 0;
  private first: DeadlineHandler | null = null;

  add(h: DeadlineHandler): void {
    if (h.watched) return;
    h.watched = true;
    h.next = this.first;
    if (this.first) this.first.prev = h;
    this.first = h;
    this.size++;
  }

  delete(h: DeadlineHandler): void {
    if (!h.watched) return;
    h.watched = false;
    if (h.prev) h.prev.next = h.next;
    else this.first = h.next;
    if (h.next) h.next.prev = h.prev;
    h.prev = h.next = null;
    this.size--;
  }

  /** Expires every request whose deadline has passed (expiring unlinks it, so the next one is read first). */
  expireDue(now: number): void {
    for (let h = this.first; h; ) {
      const next = h.next;
      // `watched`: an expiry that synchronously ended another request has unlinked it; never abort a finished one.
      if (h.watched && h.deadline <= now) h.expire(now);
      h = next;
    }
  }

  clear(): void {
    while (this.first) this.delete(this.first);
  }
}

/** Wraps one request's handler: moves its deadline on every sign of upstream life, and aborts it when the deadline passes. */
class DeadlineHandler implements Dispatcher.DispatchHandler {
  deadline = Infinity;
  // WatchList links.
  watched = false;
  prev: DeadlineHandler | null = null;
  next: DeadlineHandler | null = null;
  private phase: Phase = 'queue';
  private controller: Dispatcher.DispatchController | undefined;
  /** The request timed out in the queue and its handler was told so: once undici starts it, it is cancelled unsent. */
  private expiredInQueue: UpstreamDeadlineError | undefined;
  /** The request body while it uploads, and the two listeners on it (made only for a request with a body). */
  private upload: Readable | undefined;
  private onUploadData: (() => void) | undefined;
  private onUploadEnd: (() => void) | undefined;

  constructor(
    private readonly inner: Dispatcher.DispatchHandler,
    private readonly watch: Watch,
    private readonly body: unknown,
  ) {}

  onRequestStart(controller: Dispatcher.DispatchController, context: unknown): void {
    if (this.expiredInQueue) {
      // undici has no way to take a request out of its queue. Throwing here drops it before anything is written
      // (undici fails the request and moves on to the next one); controller.abort() would also destroy the upstream
      // connection, and the client's request body with it: a new connection for every request that timed out.
      throw this.expiredInQueue;
    }
    this.controller = controller;
    const body = this.body as Readable | null | undefined;
    this.phase = 'headers';
    this.deadline = performance.now() + this.watch.timeoutMs;
    if (body && typeof body.once === 'function' && !body.readableEnded) {
      // The headers clock starts when the upload is complete: a large upload is not the upstream being slow. Until
      // then each chunk undici takes moves the deadline. undici attaches its own 'data' listener in the same
      // synchronous call, before the stream can flow, so listening here takes nothing from it.
      this.phase = 'upload';
      this.upload = body;
      this.onUploadData = () => {
        this.deadline = performance.now() + this.watch.timeoutMs;
      };
      this.onUploadEnd = () => {
        this.stopWatchingUpload();
        if (this.phase === 'upload') {
          this.phase = 'headers';
          this.deadline = performance.now() + this.watch.timeoutMs;
        }
      };
      body.on('data', this.onUploadData);
      body.once('end', this.onUploadEnd);
    }
    this.watch.add(this);
    this.inner.onRequestStart?.(controller, context);
  }

  private stopWatchingUpload(): void {
    if (!this.upload) return;
    this.upload.off('data', this.onUploadData!).off('end', this.onUploadEnd!);
    this.upload = this.onUploadData = this.onUploadEnd = undefined;
  }

  onRequestUpgrade(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, socket: Duplex): void {
    this.stopWatchingUpload();
    this.watch.delete(this);
    this.inner.onRequestUpgrade?.(controller, statusCode, headers, socket);
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (statusCode >= 200) {
      // An answer before the upload ended (413, an early 401): from now on the response's pace is what counts.
      this.stopWatchingUpload();
      this.phase = 'body';
    }
    this.deadline = performance.now() + this.watch.timeoutMs;
    this.inner.onResponseStart?.(controller, statusCode, headers, statusMessage);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.deadline = performance.now() + this.watch.timeoutMs;
    this.inner.onResponseData?.(controller, chunk);
  }

  onResponseEnd(controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    this.stopWatchingUpload();
    this.watch.delete(this);
    this.inner.onResponseEnd?.(controller, trailers);
  }

  onResponseError(controller: Dispatcher.DispatchController, err: Error): void {
    this.stopWatchingUpload();
    this.watch.delete(this);
    // Expired in the queue: the handler already has its error.
    if (!this.expiredInQueue) this.inner.onResponseError?.(controller, err);
  }

  expire(now: number): void {
    // Uploading and the body is not paused: undici is waiting for the client's next chunk, not for the upstream.
    if (this.phase === 'upload' && !this.upload?.isPaused()) {
      this.deadline = now + this.watch.timeoutMs;
      return;
    }
    this.stopWatchingUpload();
    this.watch.delete(this);
    const timeoutMs = this.watch.timeoutMs;
    if (this.phase === 'queue') {
      // Not started, so there is no controller to abort with: the handler gets its error now (the client its 504), and
      // onRequestStart cancels the request if undici ever gets to it. A handler reads no controller before it starts.
      this.expiredInQueue = new UpstreamDeadlineError('queue', this.watch.queueTimeoutMs);
      this.inner.onResponseError?.(undefined as unknown as Dispatcher.DispatchController, this.expiredInQueue);
      return;
    }
    this.controller?.abort(this.phase === 'body' && this.controller.paused ? new ClientStalledError(timeoutMs) : new UpstreamDeadlineError(this.phase, timeoutMs));
  }
}
