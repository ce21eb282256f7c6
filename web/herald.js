// herald.js: the browser client for Herald (and any Mercure hub).
//
// An ES module with no dependency; Herald serves this file at /herald.js.
//
//   import { Herald } from '/herald.js';
//   const herald = new Herald({ hub: '/.well-known/mercure', getToken, onTokenExpired });
//   const sub = herald.subscribe(['https://example.com/users/42'], {
//     onMessage: (update) => show(JSON.parse(update.data)),
//     onState: (state, detail) => badge(state), // connecting | open | reconnecting | closed
//   });
//
// Why not the browser's EventSource: it cannot send an Authorization header,
// gives up for good after a non-200 answer (a 502 during a deploy, a 401
// once the token expired), only sends Last-Event-ID on its own reconnects
// (never on a fresh page), and holds one HTTP/1.1 connection per tab, when
// a browser allows 6 per host for all its tabs together. This client reads
// the stream with fetch() and its own SSE parser, reconnects itself with
// capped exponential back-off and jitter, refreshes the token on 401,
// remembers where each subscription stood (sessionStorage), and lets the
// tabs of one origin share one connection: they elect a leader with the Web
// Locks API, and the leader holds the streams and forwards each update to
// the other tabs over a BroadcastChannel. docs/herald-js.md has the design.

const DEFAULTS = {
  // First reconnection delay (ms); doubled after each failure up to maxDelay,
  // then randomised down to half of it (jitter), so that every tab of every
  // user does not come back in the same millisecond after a deploy.
  minDelay: 500,
  maxDelay: 30_000,
  // A stream that carries nothing (not even the hub's keep-alive comments,
  // every 15 s by default) for this long is presumed dead and reopened.
  // 0: never.
  idleTimeout: 45_000,
  // Recent updates each tab keeps per subscription, so a tab that joins (or
  // reloads into) a stream another tab already holds catches up without a
  // new request to the hub, and so duplicates after a leader change are
  // recognised. Each tab keeps this many per topic set any tab subscribes to.
  replayBuffer: 500,
  // Share one connection among the tabs of this origin (needs Web Locks and
  // BroadcastChannel; without them every tab connects on its own).
  shared: true,
  // Send cookies to a hub on another origin (the mercureAuthorization
  // cookie). Same-origin hubs always get them.
  withCredentials: false,
};

// Sent as last_event_id on a first connection: an id no update carries, so
// the hub replays nothing and answers, in its Last-Event-ID response header,
// where its history stood at that moment. The client resumes from there
// after a drop, even if no update arrived in between.
const HEAD_PROBE = 'herald.js:head';

// Answers that another attempt cannot change.
const FATAL_STATUS = new Set([400, 404, 405, 406, 410, 413, 414, 431]);

/**
 * An SSE parser following the WHATWG HTML "server-sent events" algorithm:
 * lines end in CRLF, LF or CR (also when split across chunks); `data` lines
 * are joined with LF; `id` sets the last event id (ignored if it contains
 * NUL) and persists across events; `retry` takes digits only; lines starting
 * with `:` are comments; a field with no colon has an empty value; an
 * unterminated event at end of stream is dropped (by never calling
 * dispatch). Feed it decoded text.
 */
export class SseParser {
  /**
   * @param {(event: {id: string, type: string, data: string, hasId: boolean}) => void} onEvent
   *   `hasId` tells whether the event's own block carried an `id` field
   *   (otherwise `id` is inherited from an earlier event, as in EventSource).
   * @param {{onRetry?: (ms: number) => void, onComment?: (text: string) => void,
   *          onId?: (id: string) => void, lastEventId?: string}} [options]
   *   `onId`: a block that set an id but carried no data.
   */
  constructor(onEvent, options = {}) {
    this.onEvent = onEvent;
    this.onRetry = options.onRetry;
    this.onComment = options.onComment;
    this.onId = options.onId;
    this.lastEventId = options.lastEventId ?? '';
    this._idBuffer = this.lastEventId;
    this._sawId = false;
    this._data = [];
    this._type = '';
    this._line = '';
    this._afterCR = false;
  }

  feed(text) {
    if (!text) return;
    let start = 0;
    if (this._afterCR) {
      this._afterCR = false;
      if (text.charCodeAt(0) === 10) start = 1;
    }
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      const line = this._line + text.slice(start, i);
      this._line = '';
      if (c === 13) {
        if (i + 1 === text.length) this._afterCR = true;
        else if (text.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
      this._processLine(line);
    }
    this._line += text.slice(start);
  }

  _processLine(line) {
    if (line === '') {
      this._dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58 /* : */) {
      this.onComment?.(line.slice(1));
      return;
    }
    const colon = line.indexOf(':');
    let name = line;
    let value = '';
    if (colon !== -1) {
      name = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    switch (name) {
      case 'event':
        this._type = value;
        break;
      case 'data':
        this._data.push(value);
        break;
      case 'id':
        if (!value.includes('\0')) {
          this._idBuffer = value;
          this._sawId = true;
        }
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.onRetry?.(parseInt(value, 10));
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  _dispatch() {
    this.lastEventId = this._idBuffer;
    const sawId = this._sawId;
    const data = this._data;
    const type = this._type;
    this._sawId = false;
    this._data = [];
    this._type = '';
    if (data.length === 0) {
      if (sawId) this.onId?.(this.lastEventId);
      return;
    }
    this.onEvent({ id: this.lastEventId, type: type || 'message', data: data.join('\n'), hasId: sawId });
  }
}

/** The reconnection delay after `failures` failed attempts in a row. */
export function backoffDelay(failures, minDelay, maxDelay) {
  return jitter(Math.min(maxDelay, minDelay * 2 ** Math.max(0, failures - 1)));
}

/** Somewhere between half of `ms` and all of it, at random. */
function jitter(ms) {
  return Math.round(ms / 2 + (Math.random() * ms) / 2);
}

/** Where this tab's token comes from, and how a fresh one is fetched. */
class Credentials {
  constructor({ token, getToken, onTokenExpired }) {
    this.token = token;
    this.fetchFresh = onTokenExpired ?? getToken;
    this.getToken = getToken;
  }

  get canRefresh() {
    return typeof this.fetchFresh === 'function';
  }

  async current() {
    if (this.token == null && this.getToken) this.token = await this.getToken();
    return this.token;
  }

  async refresh() {
    this.token = await this.fetchFresh();
  }
}

/**
 * One event stream to the hub: fetch(), parse, reconnect. It reports
 * updates, positions (the last id moved without an update: a resume
 * baseline) and connection states to `report`, and never gives up unless
 * the hub's answer cannot change (a 400, a 401 with no way to get a new
 * token) or it is closed.
 */
class Connection {
  constructor(options, credentials, topics, lastId, firstState, report) {
    this.options = options;
    this.credentials = credentials;
    this.topics = topics;
    this.lastId = lastId ?? null;
    this.firstState = firstState;
    this.report = report;
    this.closed = false;
    this.retry = null; // the hub's `retry:` field, if it sent one
    this._abort = null;
    this._wake = null;
    this._idle = null;
  }

  start() {
    this._run().catch((e) => {
      if (!this.closed) this.report.state('closed', { error: String(e?.message ?? e) });
    });
  }

  /** Stop for good, silently (whoever closes knows). */
  close() {
    this.closed = true;
    clearTimeout(this._idle);
    this._abort?.abort();
    this._wake?.();
  }

  /** Skip the back-off wait (the browser came back online). */
  wake() {
    this._wake?.();
  }

  url() {
    const url = new URL(this.options.hub);
    for (const topic of this.topics) url.searchParams.append('topic', topic);
    url.searchParams.set('last_event_id', this.lastId ?? HEAD_PROBE);
    return url;
  }

  async _run() {
    const { minDelay, maxDelay } = this.options;
    let failures = 0;
    this.report.state(this.firstState, {});
    while (!this.closed) {
      let delay = 0;
      try {
        const requested = this.lastId;
        const response = await this._fetch();
        if (this.closed) return;
        const type = response.headers.get('content-type') ?? '';
        if (response.status === 200 && type.startsWith('text/event-stream')) {
          const failedBefore = failures;
          failures = 0;
          const gap = this._position(response, requested);
          this.report.state('open', gap ? { gap: true } : {});
          const openedAt = Date.now();
          const received = await this._read(response.body);
          if (this.closed) return;
          if (!received && Date.now() - openedAt < 1000) {
            // Accepted, then closed at once with nothing sent: a failure
            // (a proxy in trouble), or this would retry twice a second.
            failures = failedBefore + 1;
            delay = backoffDelay(failures, minDelay, maxDelay);
          } else {
            // The hub ended the stream (shutdown, token expiry): come back
            // after the delay it asked for, if any.
            delay = jitter(this.retry ?? minDelay);
          }
          this.report.state('reconnecting', { reason: 'ended', retryIn: delay });
        } else {
          const status = response.status;
          const body = await response.text().catch(() => '');
          const error = body.trim().slice(0, 300) || `HTTP ${status}`;
          // The id of the hub's log line for this refusal, to quote.
          const requestId = response.headers.get('x-request-id') ?? undefined;
          if (status === 401 || status === 403) {
            if (!this.credentials.canRefresh) {
              this.report.state('closed', { status, error, requestId, reason: 'unauthorized' });
              return;
            }
            failures++;
            // The first refusal in a row: fetch a token and retry at once.
            delay = failures === 1 ? 0 : backoffDelay(failures, minDelay, maxDelay);
            this.report.state('reconnecting', { status, error, requestId, reason: 'unauthorized', retryIn: delay });
            try {
              await this.credentials.refresh();
            } catch (e) {
              delay = backoffDelay(failures, minDelay, maxDelay);
              this.report.state('reconnecting', { status, error: `onTokenExpired failed: ${e?.message ?? e}`, retryIn: delay });
            }
          } else if (FATAL_STATUS.has(status)) {
            this.report.state('closed', { status, error, requestId });
            return;
          } else {
            failures++;
            delay = retryAfter(response) ?? backoffDelay(failures, minDelay, maxDelay);
            this.report.state('reconnecting', { status, error, requestId, retryIn: delay });
          }
        }
      } catch (e) {
        if (this.closed) return;
        failures++;
        delay = backoffDelay(failures, minDelay, maxDelay);
        this.report.state('reconnecting', { error: String(e?.message ?? e), retryIn: delay });
      } finally {
        clearTimeout(this._idle);
      }
      await this._sleep(delay);
    }
  }

  async _fetch() {
    const abort = new AbortController();
    this._abort = abort;
    this._watch();
    const headers = { accept: 'text/event-stream' };
    const token = await this.credentials.current();
    if (token) headers.authorization = `Bearer ${token}`;
    return fetch(this.url(), {
      headers,
      signal: abort.signal,
      cache: 'no-store',
      credentials: this.options.withCredentials ? 'include' : 'same-origin',
    });
  }

  /**
   * Where the hub resumed: `Mercure-Last-Event-ID: earliest` means it
   * replays nothing (first connection, or an id it no longer has); its
   * `Last-Event-ID` header then names the newest update in history, which
   * becomes the position to resume from later. True when an id was asked
   * for and not found: updates were missed.
   */
  _position(response, requested) {
    if (requested === 'earliest') return false;
    if (response.headers.get('mercure-last-event-id') !== 'earliest') return false;
    const head = response.headers.get('last-event-id');
    if (head) {
      this.lastId = head;
      this.report.position(head);
    }
    return requested != null;
  }

  /** Parse the stream until it ends; true if anything at all arrived. */
  async _read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser(
      (event) => {
        if (event.hasId && event.id !== '') this.lastId = event.id;
        this.report.event(event);
      },
      {
        onRetry: (ms) => {
          this.retry = ms;
        },
        onId: (id) => {
          if (id === '') return;
          this.lastId = id;
          this.report.position(id);
        },
      },
    );
    let received = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done || this.closed) return received;
      received = true;
      this._watch();
      parser.feed(value);
    }
  }

  /** (Re)arm the idle watchdog: silence for idleTimeout aborts the request. */
  _watch() {
    clearTimeout(this._idle);
    const ms = this.options.idleTimeout;
    if (ms > 0) {
      const abort = this._abort;
      this._idle = setTimeout(() => abort?.abort(new Error(`no data for ${ms} ms`)), ms);
    }
  }

  _sleep(ms) {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this._wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

function retryAfter(response) {
  const seconds = Number(response.headers.get('retry-after'));
  return Number.isFinite(seconds) && seconds > 0 ? jitter(seconds * 1000) : null;
}

/** An insertion-ordered map that forgets its oldest entries beyond `cap`. */
class Recent {
  constructor(cap) {
    this.cap = Math.max(1, cap);
    this.map = new Map();
  }

  has(id) {
    return this.map.has(id);
  }

  add(id, value) {
    this.map.set(id, value);
    if (this.map.size > this.cap) this.map.delete(this.map.keys().next().value);
  }

  /** Values added after `id` (which must be present), oldest first. */
  after(id) {
    const out = [];
    let found = false;
    for (const [key, value] of this.map) {
      if (found) out.push(value);
      else if (key === id) found = true;
    }
    return out;
  }

  values() {
    return [...this.map.values()];
  }
}

/** One subscription handed to the page. */
export class Subscription {
  constructor(herald, group, handlers) {
    this._herald = herald;
    this._group = group;
    this._handlers = handlers;
    this.topics = group.topics;
    this.state = null;
    this.closed = false;
  }

  /** The id of the last update delivered (where a fresh page resumes). */
  get lastEventId() {
    return this._group.lastDelivered;
  }

  close() {
    if (this.closed) return;
    this._herald._unsubscribe(this);
    this._setState('closed', {});
    this.closed = true;
  }

  _message(update) {
    if (this.closed) return;
    try {
      this._handlers.onMessage?.(update);
    } catch (e) {
      reportError(e);
    }
  }

  _setState(state, detail) {
    if (this.closed) return;
    if (state === this.state && state !== 'reconnecting') return;
    this.state = state;
    try {
      this._handlers.onState?.(state, detail);
    } catch (e) {
      reportError(e);
    }
  }
}

function reportError(e) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
  else setTimeout(() => { throw e; });
}

/**
 * The page's subscriptions to one topic set. Tabs share streams per topic
 * set: an update does not say which topic it was published on, so a stream
 * can only be forwarded whole to the tabs that asked for exactly its topics.
 */
class LocalGroup {
  constructor(key, topics, startId, cap) {
    this.key = key;
    this.topics = topics;
    this.subs = new Set();
    // Where this page stands: the last update delivered to it.
    this.lastDelivered = startId ?? null;
    this.delivered = new Recent(cap);
    // Until the leader has taken this page's position into account, live
    // updates are held back: the leader first sends what the page missed.
    this.joining = true;
    this.state = { state: 'connecting', detail: {} };
  }
}

/** What the channel carried for one topic set, as every tab saw it. */
class ChannelRecord {
  constructor(cap) {
    this.recent = new Recent(cap);
    this.lastId = null;
    this.state = null;
  }
}

/** The tab that holds the streams: one per topic set the tabs ask for. */
class Leader {
  constructor(herald) {
    this.herald = herald;
    this.members = new Map(); // tab id -> [{key, topics, lastId}]
    this.groups = new Map(); // key -> {state, connection}
    this.sweeper = herald._shared ? setInterval(() => this.sweep(), 3000) : null;
  }

  /** A tab's whole subscription list (sent on every change). */
  onSubs(tab, subs) {
    this.members.set(tab, subs);
    const herald = this.herald;
    for (const { key, topics, lastId } of subs) {
      const record = herald._record(key);
      let tail = [];
      let gap = false;
      if (lastId != null && record.lastId != null && lastId !== record.lastId) {
        if (record.recent.has(lastId)) {
          tail = record.recent.after(lastId);
        } else {
          // Older than what the tabs kept: hand over all of it, say so.
          tail = record.recent.values();
          gap = true;
        }
      }
      let group = this.groups.get(key);
      if (!group) {
        group = this.open(key, topics, record.lastId ?? lastId);
      } else if (record.lastId == null && lastId != null && group.state.state !== 'open') {
        // Nothing delivered yet to anyone: start where this tab stopped.
        group.connection.close();
        group = this.open(key, topics, lastId);
      }
      for (const update of tail) herald._send({ t: 'update', key, update, to: [tab] });
      herald._send({ t: 'state', key, ...group.state, to: [tab], ack: true, gap });
    }
    this.reconcile();
  }

  onBye(tab) {
    this.members.delete(tab);
    this.reconcile();
  }

  open(key, topics, lastId) {
    const herald = this.herald;
    const previous = herald._record(key).state?.state;
    const first = previous === 'open' || previous === 'reconnecting' ? 'reconnecting' : 'connecting';
    const group = { state: { state: first, detail: {} }, connection: null };
    group.connection = new Connection(herald.options, herald._credentials, topics, lastId, first, {
      event: (update) => {
        // A new leader resumes from the last id the tabs saw; what the old
        // one forwarded just before it went is recognised here.
        if (update.hasId && update.id !== '' && herald._record(key).recent.has(update.id)) return;
        herald._send({ t: 'update', key, update });
      },
      position: (id) => herald._send({ t: 'position', key, id }),
      state: (state, detail) => {
        group.state = { state, detail };
        herald._send({ t: 'state', key, state, detail });
      },
    });
    this.groups.set(key, group);
    group.connection.start();
    return group;
  }

  /** Close the streams no tab asks for any more. */
  reconcile() {
    const wanted = new Set();
    for (const subs of this.members.values()) for (const s of subs) wanted.add(s.key);
    for (const [key, group] of this.groups) {
      if (!wanted.has(key)) {
        group.connection.close();
        this.groups.delete(key);
        this.herald._send({ t: 'gone', key });
      }
    }
  }

  /** Forget tabs that went away without a word (crashed, killed). */
  async sweep() {
    let held;
    try {
      held = (await navigator.locks.query()).held ?? [];
    } catch {
      return;
    }
    const alive = new Set(held.map((lock) => lock.name));
    for (const tab of [...this.members.keys()]) {
      if (tab !== this.herald.tabId && !alive.has(this.herald._tabLockName(tab))) this.members.delete(tab);
    }
    this.reconcile();
  }

  wakeAll() {
    for (const group of this.groups.values()) group.connection.wake();
  }

  stop() {
    clearInterval(this.sweeper);
    for (const group of this.groups.values()) group.connection.close();
    this.groups.clear();
  }
}

/**
 * A client of one hub. Create one per page (tabs of the same origin and hub
 * find each other by the hub's URL, or by `name`).
 */
export class Herald {
  /**
   * @param {object} options
   * @param {string} options.hub  the hub URL, e.g. '/.well-known/mercure'
   * @param {string} [options.token]  a subscriber JWT, sent as Authorization: Bearer
   * @param {() => Promise<string>|string} [options.getToken]  fetches a token
   *   (called when there is none yet, and on 401 when onTokenExpired is not given)
   * @param {() => Promise<string>|string} [options.onTokenExpired]  fetches a
   *   fresh token after the hub answered 401
   * @param {string} [options.name]  tabs with the same name (and the same
   *   user) share streams (default: the hub URL)
   * @param {string} [options.user]  who the page's user is: tabs share
   *   streams only with tabs of the same user (default: the token's `sub`;
   *   pass it when the hub reads a cookie, or tokens come only from getToken)
   */
  constructor(options = {}) {
    if (!options.hub) {
      throw new TypeError("Herald: options.hub is required (the hub URL, e.g. '/.well-known/mercure')");
    }
    this.options = { ...DEFAULTS, ...options };
    this.options.hub = new URL(options.hub, globalThis.location?.href).href;
    // Tabs share streams only with tabs of the same user: the streams are
    // read with the leader tab's credentials, and on a shared computer a
    // tab where someone else has since logged in must not read through
    // the first user's stream.
    const who = shareIdentity(this.options);
    this.name = `${this.options.name ?? this.options.hub}#${who ?? 'alone'}`;
    this.tabId = randomId();
    this._credentials = new Credentials(this.options);
    this._local = new Map(); // key -> LocalGroup
    this._records = new Map(); // key -> ChannelRecord
    this._leader = null;
    this._channel = null;
    this._running = false;
    this._closed = false;
    this._shared =
      this.options.shared !== false &&
      who !== null &&
      typeof BroadcastChannel === 'function' &&
      typeof globalThis.navigator?.locks?.request === 'function';
    this._onPageHide = () => this._stop();
    this._onPageShow = (e) => {
      if (e.persisted) this._start();
    };
    this._onOnline = () => this._leader?.wakeAll();
    globalThis.addEventListener?.('pagehide', this._onPageHide);
    globalThis.addEventListener?.('pageshow', this._onPageShow);
    globalThis.addEventListener?.('online', this._onOnline);
    this._start();
  }

  /** Whether this tab holds the streams (shared mode), or always (alone). */
  get isLeader() {
    return this._leader !== null;
  }

  /**
   * Subscribe to updates on `topics` (exact topics, or URI templates such as
   * 'https://example.com/books/{id}').
   * @param {string|string[]} topics
   * @param {object|Function} [handlers]  onMessage(update), onState(state, detail);
   *   lastEventId: resume after this id (null: from now); absent: where this
   *   tab's last subscription to the same topics stopped (sessionStorage).
   * @returns {Subscription}
   */
  subscribe(topics, handlers = {}) {
    if (this._closed) throw new Error('Herald: subscribe() after close()');
    if (typeof handlers === 'function') handlers = { onMessage: handlers };
    const list = [...new Set((Array.isArray(topics) ? topics : [topics]).map(String))].sort();
    if (list.length === 0) throw new TypeError('Herald: subscribe() needs at least one topic');
    const key = JSON.stringify(list);
    let group = this._local.get(key);
    const fresh = !group;
    if (fresh) {
      const start = 'lastEventId' in handlers ? handlers.lastEventId : this._load(key);
      group = new LocalGroup(key, list, start, this.options.replayBuffer);
      this._local.set(key, group);
    }
    const sub = new Subscription(this, group, handlers);
    group.subs.add(sub);
    sub._setState(group.state.state, group.state.detail);
    if (fresh) this._announce();
    return sub;
  }

  /** Close every subscription and leave the tab group. */
  close() {
    if (this._closed) return;
    for (const group of [...this._local.values()]) for (const sub of [...group.subs]) sub.close();
    this._stop();
    this._closed = true;
    globalThis.removeEventListener?.('pagehide', this._onPageHide);
    globalThis.removeEventListener?.('pageshow', this._onPageShow);
    globalThis.removeEventListener?.('online', this._onOnline);
  }

  _unsubscribe(sub) {
    const group = sub._group;
    group.subs.delete(sub);
    if (group.subs.size === 0) {
      this._local.delete(group.key);
      this._announce();
    }
  }

  // --- tab group -------------------------------------------------------

  _start() {
    if (this._running || this._closed) return;
    this._running = true;
    for (const group of this._local.values()) group.joining = true;
    if (!this._shared) {
      this._becomeLeader();
      return;
    }
    this._channel = new BroadcastChannel(`herald:${this.name}`);
    this._channel.onmessage = (e) => this._receive(e.data);
    const stop = new AbortController();
    this._stopLocks = stop;
    this._tabLocked = false;
    // Held while this tab lives: the leader reads the list of held locks
    // to notice tabs that vanished without saying goodbye.
    navigator.locks
      .request(this._tabLockName(this.tabId), { signal: stop.signal }, () => {
        if (!this._running) return undefined;
        this._tabLocked = true;
        this._announce();
        return new Promise((release) => {
          this._releaseTabLock = release;
        });
      })
      .catch(() => {});
    // Granted to one tab at a time; when that tab goes (closed, crashed,
    // navigated away) the browser grants it to the next one waiting.
    navigator.locks
      .request(`herald:leader:${this.name}`, { signal: stop.signal }, () => {
        if (!this._running) return undefined;
        this._becomeLeader();
        return new Promise((release) => {
          this._releaseLeaderLock = release;
        });
      })
      .catch(() => {});
  }

  _stop() {
    if (!this._running) return;
    this._running = false;
    this._leader?.stop();
    this._leader = null;
    this._stopLocks?.abort();
    this._releaseLeaderLock?.();
    this._releaseTabLock?.();
    this._releaseLeaderLock = this._releaseTabLock = null;
    if (this._channel) {
      this._channel.postMessage({ t: 'bye', from: this.tabId });
      this._channel.close();
      this._channel = null;
    }
  }

  _becomeLeader() {
    this._leader = new Leader(this);
    this._channel?.postMessage({ t: 'leader', from: this.tabId });
    this._leader.onSubs(this.tabId, this._subsList());
  }

  _tabLockName(tab) {
    return `herald:tab:${this.name}:${tab}`;
  }

  _subsList() {
    return [...this._local.values()].map((g) => ({ key: g.key, topics: g.topics, lastId: g.lastDelivered }));
  }

  /** Tell the leader this tab's subscriptions (all of them, each time). */
  _announce() {
    if (!this._running) return;
    if (this._leader) this._leader.onSubs(this.tabId, this._subsList());
    else if (this._tabLocked) this._channel?.postMessage({ t: 'subs', from: this.tabId, subs: this._subsList() });
  }

  /** Send to every tab, this one included. */
  _send(message) {
    this._channel?.postMessage(message);
    this._receive(message);
  }

  _record(key) {
    let record = this._records.get(key);
    if (!record) {
      record = new ChannelRecord(this.options.replayBuffer);
      this._records.set(key, record);
    }
    return record;
  }

  _receive(message) {
    switch (message.t) {
      case 'update':
        this._onUpdate(message);
        break;
      case 'position':
        this._onPosition(message);
        break;
      case 'state':
        this._onState(message);
        break;
      case 'gone':
        // Nobody holds this topic set any more: forget what it carried.
        if (!this._local.has(message.key)) this._records.delete(message.key);
        break;
      case 'leader':
        if (message.from !== this.tabId) this._announce();
        break;
      case 'subs':
        this._leader?.onSubs(message.from, message.subs);
        break;
      case 'bye':
        this._leader?.onBye(message.from);
        break;
      default:
        break;
    }
  }

  _onUpdate({ key, update, to }) {
    if (to && !to.includes(this.tabId)) return;
    const hasId = update.hasId && update.id !== '';
    if (!to) {
      // A broadcast: every tab keeps it, whether it asked for it or not,
      // since any tab may become the leader and resume from it.
      const record = this._record(key);
      if (hasId) {
        if (record.recent.has(update.id)) return;
        record.recent.add(update.id, update);
        record.lastId = update.id;
      }
    }
    const group = this._local.get(key);
    if (!group) return;
    // Joining from a known position: the leader's catch-up covers this one.
    if (!to && group.joining && group.lastDelivered != null) return;
    if (hasId) {
      if (group.delivered.has(update.id)) return;
      group.delivered.add(update.id, true);
      group.lastDelivered = update.id;
      this._store(key, update.id);
    }
    const event = { id: update.id, type: update.type, data: update.data };
    for (const sub of [...group.subs]) sub._message(event);
  }

  _onPosition({ key, id }) {
    this._record(key).lastId = id;
    const group = this._local.get(key);
    if (group && !group.joining) {
      group.lastDelivered = id;
      this._store(key, id);
    }
  }

  _onState({ key, state, detail, to, ack, gap }) {
    if (to && !to.includes(this.tabId)) return;
    this._record(key).state = { state, detail };
    const group = this._local.get(key);
    if (!group) return;
    if (ack) {
      group.joining = false;
      if (gap) detail = { ...detail, gap: true };
    }
    group.state = { state, detail };
    for (const sub of [...group.subs]) sub._setState(state, detail);
  }

  // --- where each subscription stands, per tab ------------------------

  _storageKey(key) {
    return `herald:${this.name}:${key}`;
  }

  _load(key) {
    try {
      return globalThis.sessionStorage?.getItem(this._storageKey(key)) ?? null;
    } catch {
      return null; // storage disabled (sandboxed frame, privacy settings)
    }
  }

  _store(key, id) {
    try {
      globalThis.sessionStorage?.setItem(this._storageKey(key), id);
    } catch {
      // storage full or disabled: resuming on a fresh page is then lost
    }
  }
}

/** The claims of a JWT, unverified (null if it is not one). */
function tokenClaims(token) {
  try {
    const part = String(token).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/**
 * Who the streams of this page are read as, for sharing them with other
 * tabs: `options.user` if the page says; else the token's `sub`; else
 * (a token without `sub`) what it may read; no token at all: the same for
 * every such tab. null (do not share): credentials that only a fetch will
 * tell (getToken/onTokenExpired without a token), or a token we cannot read.
 */
function shareIdentity(options) {
  if (options.user != null) return `user:${options.user}`;
  if (options.token) {
    const claims = tokenClaims(options.token);
    if (!claims) return null;
    if (typeof claims.sub === 'string') return `sub:${claims.sub}`;
    return `grants:${JSON.stringify([claims.mercure?.subscribe ?? null, claims.authorization_details ?? null])}`;
  }
  if (options.getToken || options.onTokenExpired) return null;
  return 'no-token';
}

function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}
