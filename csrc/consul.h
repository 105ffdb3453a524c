/*
 * consul.h: internal declarations shared by the C files of the consul module.
 *
 * Layers, bottom up:
 *   buf.c      growable byte buffers, percent-escaping, JSON string escaping, base64, durations
 *   http.c     the configuration of a client, the answer's headers, and libcurl: one consul_http
 *              is one connection, consul_http_perform sends one consul_req (no Lua)
 *   wire.c     the same requests and answers as bytes, for drivers that move bytes themselves
 *              (nginx's cosockets): the request head, an incremental answer parser (no Lua)
 *   mach.c     the machine: one call's requests, budgets and answers, stepped by a driver
 *              ("send this", "sleep this long", "done"); the blocking libcurl driver (no Lua)
 *   json.c     cJSON documents with exact 64-bit integers and whole strings, and Lua <-> JSON
 *   op.c       the consul.Op userdata owning one call in flight, and the generic call path:
 *              options read into C, a driver run, the answer shaped into result, err, meta
 *   client.c   the consul.Client userdata, consul.new and its options, c:request
 *   routes.c   the table of every Consul HTTP route and the generic method serving them
 *   kv.c       the KV methods whose answers need shaping (get, record, list, keys, pairs, put, delete)
 *   stream.c   the streaming routes: agent:monitor, snapshot:save and restore
 *   session.c  the session steps that lock machines share (no Lua)
 *   lock.c     locks: Go's acquire algorithm and release as machines, the consul.Lock userdata
 *   semaphore.c  semaphores in the Go client's layout, as machines (the same userdata)
 *   renew.c    the renewer thread: keeps held locks alive, runs background releases
 *   module.c   luaopen_consul_core and nothing else
 * Only luaopen_* is exported; everything here is hidden.
 */
#ifndef CONSUL_H
#define CONSUL_H

#include "compat.h"

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>

#pragma GCC visibility push(hidden)

/* Fields a lock's Lua side and the renewer thread both read. */
#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

#define CONSUL_VERSION "0.1.0"
#define CONSUL_MAX_WAIT_MS 300000  /* Consul's default (and our longest) blocking wait: 5 min */
#define CONSUL_WAIT_GRACE_MS 750  /* how far past a lock's `wait` a request in flight may run:
                                    a call returns within wait + 1 s, with room to spare */
#define CONSUL_MAX_HEAD 65536      /* an answer's status line and headers, at most */
#define CONSUL_MAX_URL 1048576     /* a request's path and query: Go's server reads 1 MiB of head */
#define CONSUL_DEFAULT_MAX_ANSWER ((size_t)64 << 20)  /* an answer's body, by default */
#define CONSUL_CLIENT_MT "consul.Client"
#define CONSUL_GROUP_MT_PREFIX "consul.group."
#define CONSUL_NEVER INT64_MAX

/* The flags Consul's own `consul lock` and Go client put on lock and semaphore keys. */
#define CONSUL_LOCK_FLAG UINT64_C(0x2ddccbc058a50c18)
#define CONSUL_SEMAPHORE_FLAG UINT64_C(0xe0f69a2baa414de0)

/* ---- buf.c ------------------------------------------------------------ */

typedef struct consul_buf {
    char *data;  /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
} consul_buf;

#define CONSUL_BUF_INIT { NULL, 0, 0 }

int consul_buf_reserve(consul_buf *b, size_t extra);  /* 0 ok, -1 out of memory */
int consul_buf_add(consul_buf *b, const void *p, size_t n);
int consul_buf_adds(consul_buf *b, const char *s);
/* a string literal, its length counted by the compiler */
#define consul_buf_addlit(b, lit) consul_buf_add((b), lit, sizeof(lit) - 1)
int consul_buf_addf(consul_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void consul_buf_reset(consul_buf *b);  /* keeps the memory */
void consul_buf_free(consul_buf *b);

/* Percent-escape every byte but RFC 3986 unreserved ones (and '/' when keep_slash). */
int consul_buf_add_escaped(consul_buf *b, const char *s, size_t n, int keep_slash);
/* s[0..n) as a JSON string, quotes included: any bytes, control characters escaped. */
int consul_buf_add_json_string(consul_buf *b, const char *s, size_t n);
/* s[0..n) for a message: control bytes and quotes as \xNN, cut after max bytes ("..."). */
int consul_buf_add_printable(consul_buf *b, const char *s, size_t n, size_t max);
int consul_buf_add_base64(consul_buf *b, const unsigned char *p, size_t n);
/* Decodes n base64 characters into out (NULL: only checks): the length, or -1. */
long consul_base64_decode(const char *in, size_t n, unsigned char *out);
/* Decodes s in place in one pass: the length, or -1 with s as it was when it is not base64. */
long consul_base64_decode_inplace(char *s, size_t n);

/* Bytes of a stream cut into lines: held up to max unread bytes. */
typedef struct consul_lines {
    consul_buf buf;
    size_t pos;   /* first unread byte */
    size_t max;
} consul_lines;
/* 0 ok, -1 over max (or out of memory): nothing added */
int consul_lines_add(consul_lines *l, const char *p, size_t n);
/* The next line (without its CR LF), or with partial the rest; 1 found, 0 none */
int consul_lines_next(consul_lines *l, int partial, const char **line, size_t *len);
void consul_lines_free(consul_lines *l);

/* Go duration ("15s", "1m30s", "250ms") to milliseconds; -1 when malformed. */
int64_t consul_duration_ms(const char *s);
int64_t consul_now_ms(void);  /* CLOCK_MONOTONIC */
void consul_millisleep(int64_t ms);
/* A session ID as Consul makes them (hex digits and dashes, 1..63 bytes). */
int consul_valid_id(const char *s, size_t n);

/* ---- http.c: configuration, answers, libcurl ------------------------------- */

/* How a request failed: meta.code in Lua. */
enum consul_code {
    CONSUL_OK = 0,
    CONSUL_ECONNECT,  /* "connect" */
    CONSUL_ETIMEOUT,  /* "timeout" */
    CONSUL_ETLS,      /* "tls" */
    CONSUL_EHTTP,     /* "http": an answer came, with a failing status */
    CONSUL_EDECODE,   /* "decode": an answer came that we cannot read, or of the wrong shape */
    CONSUL_ECLOSED,   /* "closed": the peer closed the connection mid-answer */
    CONSUL_ECONFLICT, /* "conflict": a lock key that is not a lock */
    CONSUL_ELOST,     /* "lost": a guarded write refused, the lock is not held */
    CONSUL_ENOMEM
};
const char *consul_code_name(int code);
/* A failure worth trying again later: connect, timeout, closed, a 5xx. */
int consul_retryable(int code, long status);

/* Where and how to reach the agent. Immutable once built, but for what is said below;
 * shared by reference count between a client, its calls in flight and the locks it made,
 * which may outlive it. */
typedef struct consul_conf {
    int refs;               /* atomic */
    char *base_url;         /* "http://127.0.0.1:8500", no trailing slash */
    char *hostport;         /* "127.0.0.1:8500" or the socket path, for messages */
    char *host;             /* the host to connect to ("127.0.0.1", "::1"), NULL for unix */
    int port;
    int https;
    char *server_name;      /* tls_server_name, or NULL */
    char *host_line;        /* " HTTP/1.1\r\nHost: name:port\r\n": a request line's tail and
                             * the Host header (server_name or host), for a driver of its own */
    size_t host_line_len;
    char *unix_path;        /* NULL unless unix:// */
    char *token;            /* NULL: none */
    char *dc;               /* NULL: the agent's */
    int consistency;        /* 0 default, 1 consistent, 2 stale */
    long timeout_ms;
    size_t max_answer;      /* an answer's body, at most (bytes) */
    int verify;
    char *ca_file, *ca_path, *cert_file, *key_file;
    char *connect_to;       /* "name:port:host:port" for tls_server_name, else NULL */
    char *pool;             /* nginx's name for the connections it may share (op.c) */
    /* The lock keys this conf's locks released last, with the ModifyIndex they left them at:
     * taking one again checks that index in the same transaction (lock.c). Mutable, so under
     * its own mutex (the renewer releases too). */
    pthread_mutex_t kmu;
    struct { char *path; uint64_t index; } kcache[16];
    unsigned knext;
    int64_t requests, connects;  /* atomic: what the calls made with it sent and opened */
    /* The memory of a finished call, kept for the next one (op.c), and whether the client is
     * closed (then nothing is kept). Touched only by the Lua state of the client, never by
     * the renewer; here rather than in the client because a call driven from Lua (nginx)
     * finishes knowing only its conf. */
    struct consul_op *spare;
    int closed;
    /* A blocking call's box, kept in the registry at this reference (0: none) for the next
     * blocking call to take (op.c): a new userdata with a finalizer per call cost more than
     * the call's own header parsing. */
    int box_ref;
} consul_conf;

consul_conf *consul_conf_new(void);
/* The index a lock key was left at by our last release of it: 1 known (in *index), 0 not. */
int consul_conf_key_get(consul_conf *cf, const char *path, uint64_t *index);
void consul_conf_key_put(consul_conf *cf, const char *path, uint64_t index);
void consul_conf_key_drop(consul_conf *cf, const char *path);
consul_conf *consul_conf_retain(consul_conf *cf);
void consul_conf_release(consul_conf *cf);

/* Receives streamed body bytes instead of the answer buffer; non-zero aborts. */
typedef int (*consul_sink)(void *ud, const char *p, size_t n);

/* One request, as data. Every pointer belongs to the machine (or an anchored Lua value). */
typedef struct consul_req {
    const char *method;      /* "GET", "PUT", ... */
    const char *path;        /* escaped, "/v1/kv/a%20b" */
    const char *query;       /* "recurse&dc=x" or NULL; appended after '?' */
    const char *token;       /* NULL: the conf's token; "": none */
    const char *body;        /* NULL: no body */
    size_t body_len;
    const char *content_type;
    const char *headers;     /* extra header lines, each "Name: value\n", or NULL */
    long wait_ms;            /* a blocking query's wait, for messages and budgets */
    long timeout_ms;         /* the whole request may take this long (> 0) */
    long idle_ms;            /* a stream: no byte for this long ends it (0: none) */
    int stream;              /* no whole-request bound: idle_ms only */
    consul_sink sink;        /* stream a 2xx body here when set */
    void *sink_ud;
} consul_req;

/* One answer. The body lives in the buffer its driver was given. */
typedef struct consul_resp {
    long status;             /* 0 when no answer came */
    int code;                /* enum consul_code */
    const char *body;        /* NUL-terminated */
    size_t body_len;
    uint64_t index;          /* X-Consul-Index */
    int has_index;
    int known_leader;        /* -1 unknown */
    int64_t last_contact;    /* -1 unknown */
    int json;                /* Content-Type says JSON */
    long connects;           /* new connections this request opened */
    uint64_t length;         /* Content-Length, when has_length */
    int has_length, chunked, close;  /* framing, as the headers say */
    /* the strings last: reset and copy touch them only as far as they go */
    char error[400];         /* why, when code != CONSUL_OK and no status came */
    char reason[64];         /* the status line's reason phrase */
} consul_resp;

void consul_resp_reset(consul_resp *rs);
/* *dst = *src, the strings only as far as they go (dst == src: nothing). */
void consul_resp_copy(consul_resp *dst, const consul_resp *src);
/* Reads a status line into rs: 0 ok, -1 not one. */
int consul_resp_status(consul_resp *rs, const char *line, size_t len);
/* Reads one header line (without its CRLF) into rs: 0 ok, -1 malformed. */
int consul_resp_header(consul_resp *rs, const char *line, size_t len);
/* rs failed with code for why (printf-style, one line). Returns code. */
int consul_resp_fail(consul_resp *rs, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "consul: METHOD /path: why" for a failed rs, into out. */
void consul_format_failure(char *out, size_t n, const char *method, const char *path,
                           const consul_resp *rs);

/* An incremental parser of one answer. */
typedef struct consul_wire {
    int state;
    consul_buf line;         /* a head line or chunk-size line being read */
    size_t head_bytes;
    uint64_t left;           /* bytes left of the body or of the chunk */
    int keepalive;           /* the connection may serve another request */
    int stopped;             /* a sink stopped the answer */
} consul_wire;

/* One libcurl easy handle: one kept-alive connection. */
typedef struct consul_http {
    CURL *easy;
    consul_conf *conf;
    consul_buf url;
    struct curl_slist *slist;   /* a request's own headers (a token, extra headers) */
    struct curl_slist *base, *json;  /* the usual ones, made once: Expect:, the conf's token;
                                      * and those with Content-Type: application/json */
    struct curl_slist *connect_to;
    const consul_req *rq;       /* during a transfer */
    consul_resp *rs;
    consul_buf *out;            /* the answer body goes here */
    size_t head_bytes;          /* of this answer so far */
    int oversize;               /* the answer broke a limit: its code is rs's already */
    int role;                   /* the renewer's: what the handle serves ... */
    void *owner;                /* ... and whose */
    unsigned gen;               /* the fork generation that made easy: a child makes its own */
    long set_timeout, set_idle, set_connect;  /* the limits easy has now */
    char errbuf[CURL_ERROR_SIZE];
    /* the blocking driver's own connection (libcurl connect-only; consul_http_perform) */
    CURL *co;                   /* NULL: none kept */
    unsigned co_gen;            /* the fork generation that connected it */
    consul_buf head;            /* a request's head (and a small body) */
    consul_wire wire;           /* its answer, as it arrives */
    char *piece;                /* what is received other than straight into the answer */
    char co_err[CURL_ERROR_SIZE];
} consul_http;

void consul_http_global_init(void);
/* 0 ok, -1 out of memory. h must be zeroed first; takes a reference to conf. */
int consul_http_init(consul_http *h, consul_conf *conf);
void consul_http_release(consul_http *h);  /* idempotent */
/* Never raises, never touches Lua. Returns rs->code. */
int consul_http_perform(consul_http *h, const consul_req *rq, consul_resp *rs, consul_buf *out);
/* The same step by step on a multi handle: start; then, once the multi says the transfer is
 * done, finish; or abort. rq and out must live until then. */
int consul_http_start(consul_http *h, CURLM *m, const consul_req *rq, consul_resp *rs,
                      consul_buf *out);
int consul_http_finish(consul_http *h, CURLM *m, CURLcode rc, consul_resp *rs);
void consul_http_abort(consul_http *h, CURLM *m, consul_resp *rs);
/* One transfer on its own multi handle (a stream): 1 still running, 0 finished (rs filled). */
int consul_http_step(consul_http *h, CURLM *m, int timeout_ms, consul_resp *rs);

/* ---- wire.c: requests and answers as bytes ---------------------------------- */

/* The request line and headers of rq (HTTP/1.1, keep-alive), ending in the blank line. */
int consul_wire_head(consul_buf *b, const consul_conf *cf, const consul_req *rq);


enum { CONSUL_WIRE_MORE = 0, CONSUL_WIRE_DONE = 1 };
void consul_wire_begin(consul_wire *w, consul_resp *rs, consul_buf *out);
void consul_wire_free(consul_wire *w);
int consul_wire_head_done(const consul_wire *w);  /* the answer's head is in */
/* Feeds n bytes of the answer (p == NULL: the peer closed). Returns CONSUL_WIRE_MORE,
 * CONSUL_WIRE_DONE (rs complete; w->keepalive says whether the connection is reusable) or
 * -code (rs failed: decode, closed). */
int consul_wire_feed(consul_wire *w, const consul_req *rq, consul_resp *rs, consul_buf *out,
                     size_t max_answer, const char *p, size_t n);
/* Where the next body bytes may be received in place, in out (*dst, reserved there if need
 * be): how many (0: none may, feed them instead). Then consul_wire_took says how many came,
 * and returns as feed does. */
size_t consul_wire_room(const consul_wire *w, const consul_req *rq, const consul_resp *rs,
                        consul_buf *out, size_t max_answer, char **dst);
int consul_wire_took(consul_wire *w, consul_resp *rs, consul_buf *out, size_t n);

/* ---- json.c ------------------------------------------------------------ */

/* A parsed JSON document whose integers are exact and whose strings are whole. A number
 * below 2^53 is exact as cJSON's double; for a larger one, the first time one is read,
 * every number node's valueint is replaced by the offset of its token in the text (which
 * must stay as it is as long as the document is read). Strings holding NUL bytes (cJSON
 * cuts them at the first) are found once, at parse time, and their lengths kept aside. */
typedef struct consul_jstr {
    const char *p;
    size_t len;
} consul_jstr;

typedef struct consul_json {
    cJSON *root;
    const char *text;
    size_t len;
    int indexed;  /* 0 not yet, 1 valueint holds token offsets, -1 cannot (doubles then) */
    consul_jstr *nul;   /* strings with NUL bytes, sorted by pointer */
    size_t nnul;
} consul_json;

/* 0 ok, -1 not JSON (a raw NUL byte included). text[len] must be '\0'. */
int consul_json_parse(consul_json *d, const char *text, size_t len);
void consul_json_free(consul_json *d);
/* The bytes of a string node's value (or of a node's key: consul_json_key). */
const char *consul_json_str(const consul_json *d, const cJSON *n, size_t *len);
const char *consul_json_key(const consul_json *d, const cJSON *n, size_t *len);
/* Exact value of an integer number node: 0 ok, -1 not an integer that fits 64 bits. */
int consul_json_u64(consul_json *d, const cJSON *n, uint64_t *out);
int consul_json_i64(consul_json *d, const cJSON *n, int64_t *out);
/* The fast path of a small answer: the unsigned integer at path (object keys; NULL steps into
 * an array's last element) read by a strict scan of the text, with no tree and no allocation.
 * 1 found (*out), 0 not sure (anything else): then ask cJSON, which decides. */
int consul_json_scan_u64(const char *text, size_t len, const char *const *path, int npath,
                         uint64_t *out);
/* The same for a string written without escapes: its bytes in the text. */
int consul_json_scan_str(const char *text, size_t len, const char *const *path, int npath,
                         const char **str, size_t *n);
/* The string field name of object o, if it is one: its bytes, else NULL. */
const char *consul_json_field_str(const consul_json *d, const cJSON *o, const char *name,
                                  size_t *len);

#define CONSUL_JSON_B64VALUE 1   /* "Value" strings are base64: decode / encode them */
#define CONSUL_JSON_DURATIONS 2  /* numbers under TTL / LockDelay are seconds: send "Ns" */
#define CONSUL_JSON_B64PAYLOAD 4 /* an event's "Payload" is base64: decode it */
#define CONSUL_JSON_KVREC 8      /* an object is a KV record: every field of the right type */

/* Pushes the Lua value of node (d->root when NULL). Returns CONSUL_OK, or CONSUL_EDECODE
 * (a Value not base64, a record of the wrong shape) or CONSUL_ETIMEOUT (past deadline)
 * with nothing pushed. Raises only for memory. */
int consul_json_push(lua_State *L, consul_json *d, cJSON *node, int flags, int64_t deadline);
/* The fast path of a KV record list (a JSON array of records, Values base64): pushed straight
 * from the text as consul_json_push with CONSUL_JSON_KVREC | CONSUL_JSON_B64VALUE would push
 * it, with no tree. 1 pushed; 0 not sure (nothing pushed): then parse and push, which
 * decides. Raises only for memory. */
int consul_json_push_records(lua_State *L, const char *text, size_t len, int64_t deadline);
/* Appends the JSON of the Lua value at idx to b. Raises (argerror on arg) for values JSON
 * cannot hold. */
void consul_json_encode(lua_State *L, int idx, int arg, consul_buf *b, int flags);
/* uint64 values in Lua: an integer (two's complement above 2^63) on 5.3+, a number on 5.1. */
void consul_push_u64(lua_State *L, uint64_t v);
/* A uint64 option: 0 ok, -1 not one. A decimal string is taken too; a negative integer
 * only when twos (a 5.4 integer above 2^63). */
int consul_to_u64(lua_State *L, int idx, uint64_t *out, int twos);
void consul_push_index(lua_State *L, uint64_t v);  /* a string on 5.1 above 2^53 */
void consul_json_open(lua_State *L);          /* the two sentinels, in the module */

/* ---- mach.c: machines and the blocking driver ---------------------------------- */

/* What a machine asks its driver for. */
enum { CONSUL_SEND = 1, CONSUL_SLEEP, CONSUL_DONE };

typedef struct consul_lock consul_lock;
typedef struct consul_mach consul_mach;

/* Steps m: rs is the answer to its last CONSUL_SEND, NULL at the start and after a
 * CONSUL_SLEEP. Returns what it wants next: CONSUL_SEND (m->rq), CONSUL_SLEEP (m->sleep_ms)
 * or CONSUL_DONE (m->rc; on failure m->last and m->msg say why). Never touches Lua. */
typedef int (*consul_step)(consul_mach *m, const consul_resp *rs);

struct consul_mach {
    consul_step step;
    consul_conf *conf;       /* a reference */
    consul_req rq;           /* the request to send */
    consul_buf path, query, body, hdrs;  /* its storage */
    char *token;             /* a per-call token (a copy), or NULL */
    consul_buf out;          /* the answers' bodies (the driver writes here) */
    consul_json doc;         /* the last answer, parsed */
    int64_t hard;            /* no request may run past this (monotonic ms; CONSUL_NEVER) */
    int64_t sent;            /* when the last request was asked for (monotonic ms) */
    int64_t sleep_ms;
    int rc;
    /* last and msg together, right before state: consul_op_new clears all but them */
    consul_resp last;        /* a single call's answer; a failed machine's failure */
    char msg[1024];          /* a machine's own failure message ("" : format last) */
    int state;
    consul_lock *lk;         /* lock machines: a reference */
    void *ext;               /* a machine's own state, freed with it by ext_free */
    void (*ext_free)(void *ext);
    /* Called when the machine is freed before it was done (an nginx request that went
     * away mid-wait): what it holds must not leak. */
    void (*abandon)(consul_mach *m);
    int done;                /* it returned CONSUL_DONE */
    int kept;                /* a failure is kept (last, msg): consul_mach_keep_failure */
};

/* Ready to use (zeroed first). Takes a reference to cf. */
void consul_mach_init(consul_mach *m, consul_conf *cf);
/* Frees what m holds; it can be initialised again. */
void consul_mach_release(consul_mach *m);
/* Sets m->rq for a request of the machine's (path and query already in m->path, m->query;
 * body NULL for none) and returns CONSUL_SEND, or, when m->hard leaves no time, fails m
 * with a timeout and returns CONSUL_DONE. wait_ms: a blocking query's. */
int consul_mach_send(consul_mach *m, const char *method, const char *body, size_t blen,
                     long wait_ms);
/* The same with path and query given (query NULL: none); they are copied. */
int consul_mach_sendf(consul_mach *m, const char *method, const char *path, const char *query,
                      const char *body, size_t blen, long wait_ms);
/* Ends m: rc, with last = *rs (may be NULL) and msg (may be NULL: formatted from last). */
int consul_mach_done(consul_mach *m, int rc, const consul_resp *rs, const char *msg);
/* A failure for good that the machine goes on past (a release still ends its session):
 * kept, with its message, to be what the machine answers in the end (the first one kept). */
void consul_mach_keep_failure(consul_mach *m, const consul_resp *rs);
/* Done: with the failure kept, if any, else CONSUL_OK with rs. */
int consul_mach_done_kept(consul_mach *m, const consul_resp *rs);
/* Parses rs's body into m->doc: 0 ok, or fails rs (code decode) and returns -1. */
int consul_mach_parse(consul_mach *m, const consul_resp *rs);
/* m's failure as one line, into out. */
void consul_mach_message(const consul_mach *m, char *out, size_t n);
/* The blocking driver: runs m to its end over h (libcurl); with count, its requests and new
 * connections are added to its conf's counters (c:stats()). */
int consul_mach_run(consul_mach *m, consul_http *h, int count);
/* The single-request machine: sends m->rq as prepared, keeps its answer in m->last. */
int consul_step_single(consul_mach *m, const consul_resp *rs);

/* ---- the lock state (lock.c, renew.c) ------------------------------------------ */

#define CONSUL_LOCK_MT "consul.Lock"
#define CONSUL_KIND_LOCK 0
#define CONSUL_KIND_SEMAPHORE 1  /* key is the prefix; path "/v1/kv/<prefix>/" */
/* The longest "/v1/kv/<escaped key>" of a lock. */
#define CONSUL_MAX_LOCK_PATH 1000

/* A lock's C state. Owned by reference count: the Lua object holds one, a machine working on
 * it one, and the renewer one while the lock is registered with it, so a lock collected by
 * Lua is still released. Its handles are made when first needed and freed at release. */
struct consul_lock {
    int refs;                 /* atomic */
    consul_conf *conf;
    consul_http http;         /* renewals and releases; .easy NULL until first needed */
    consul_http own;          /* the Lua side's calls once the client is closed: never the
                               * renewer's, which uses http meanwhile */
    consul_http watch;        /* the renewer's blocking reads of the key */
    char *key;                /* the raw key (any bytes) */
    size_t key_len;
    char *path;               /* "/v1/kv/<escaped key>" */
    char *value;
    size_t value_len;
    uint64_t flags;           /* CONSUL_LOCK_FLAG or CONSUL_SEMAPHORE_FLAG */
    int kind;                 /* CONSUL_KIND_* */
    int limit;                /* a semaphore's number of holders */
    char session[64];         /* "" when none; always a valid ID */
    int own_session;          /* created by the lock: destroyed by it */
    int busy;                 /* a machine is acquiring or releasing it (Lua side only) */
    /* the definition of a session the lock creates */
    char *name;
    int64_t ttl_def_ms, lock_delay_ms;
    int behavior_delete;
    /* while held */
    uint64_t fence;
    int64_t ttl_ms;           /* atomic: the session's TTL as Consul last reported it; 0 none */
    int64_t lease_ms;         /* atomic: when the session was last renewed (monotonic) */
    int held;                 /* atomic */
    int release_pending;      /* a release failed: release() tries again */
    int lost;                 /* atomic: the renewer saw it go */
    /* the renewer's, under its mutex */
    int registered;           /* in the renewer's list */
    int detach;               /* asked to leave the list (release) */
    int release_on_detach;    /* ... releasing the lock first (a collected lock) */
    int ctl_step, watch_busy; /* requests in flight */
    int64_t next_renew, next_watch;
    int64_t renew_sent;       /* when the renewal in flight was sent */
    uint64_t watch_index;
    consul_req ctl_rq, watch_rq;
    consul_resp ctl_rs, watch_rs;
    consul_buf ctl_out, watch_out;
    char ctl_path[128], ctl_query[192], watch_query[128];
    consul_lock *next, *prev;
};

consul_lock *consul_lock_new(consul_conf *cf);  /* NULL: out of memory */
void consul_lock_retain(consul_lock *lk);
void consul_lock_unref(consul_lock *lk);
int consul_lock_handle(consul_lock *lk, consul_http *h);  /* makes h when needed; 0 ok */
void consul_lock_free_handles(consul_lock *lk);           /* not while registered */
int consul_lock_held(consul_lock *lk);
int64_t consul_lock_lease(const consul_lock *lk);  /* ms; 0 none */
/* The key for a message: printable, cut when long. */
const char *consul_lock_name(const consul_lock *lk, char *out, size_t n);

/* session.c: the session steps lock machines share, each a request of m's. */
int consul_sess_create(consul_mach *m);                  /* returns CONSUL_SEND */
int consul_sess_created(consul_mach *m, const consul_resp *rs);  /* 0 ok (lk->session), -1 */
int consul_sess_renew(consul_mach *m);
int consul_sess_renewed(consul_mach *m, const consul_resp *rs, int64_t sent); /* 0, -1 gone */
int consul_sess_destroy(consul_mach *m);
int consul_sess_info(consul_mach *m, const char *id);
int64_t consul_sess_lock_delay(consul_mach *m, const consul_resp *rs);  /* ms, -1 unknown */

/* lock.c, semaphore.c: the machines. Each takes a reference to lk. */
void consul_lock_acquire_init(consul_mach *m, consul_lock *lk, int64_t wait_ms);
void consul_lock_release_init(consul_mach *m, consul_lock *lk);
void consul_sem_acquire_init(consul_mach *m, consul_lock *lk, int64_t wait_ms);
void consul_sem_release_init(consul_mach *m, consul_lock *lk);
int consul_sem_check(consul_lock *lk, consul_json *doc);  /* 1 still a holder, -1 not */
void consul_lock_open(lua_State *L);  /* module table at -1 */

/* renew.c */
/* Hands a lock just acquired to the renewer (renewals, watching the key). 0 ok. */
int consul_renew_start(consul_lock *lk);
/* Takes it back. With release, the renewer releases the lock itself and the call returns
 * at once (a finalizer's way); without, the call returns once the renewer let go of it:
 * 0, or -1 when the process is exiting and the renewer (parked) still has it, its handles
 * in use: then leave them alone. */
int consul_renew_stop(consul_lock *lk, int release);
/* Hands a lock whose session must end (a failed attempt's, a release that failed) to the
 * renewer, which releases and destroys it in the background, retrying. 0 ok. */
int consul_renew_cleanup(consul_lock *lk);
void consul_renew_atexit_once(void);
/* 1 once the process is past the atexit wait: no lock can be renewed any more. */
int consul_renew_exiting(void);

/* ---- op.c, client.c: Lua calls -------------------------------------------------- */

typedef struct consul_client {
    consul_conf *conf;
    consul_http http;         /* the client's connection */
    int closed;
} consul_client;

/* How a single call's answer becomes its result. */
enum consul_answer {
    CONSUL_ANS_AUTO = 0,  /* JSON decoded; other text as a string; empty body: true */
    CONSUL_ANS_ID,        /* the "ID" field of a JSON object */
    CONSUL_ANS_FIRST,     /* the first element of a JSON array; nil when empty or null */
    CONSUL_ANS_TEXT,      /* the body as a string, whatever its type */
    CONSUL_ANS_BOOL,      /* JSON true or false */
    CONSUL_ANS_RAW,       /* kv:get ?raw: the body's bytes; 404 absent */
    CONSUL_ANS_RECORD,    /* kv:record: the one record of a JSON array, or nil */
    CONSUL_ANS_RECORDS,   /* kv:list: an array of records; 404 {} */
    CONSUL_ANS_KEYS,      /* kv:keys: an array of strings; 404 {} */
    CONSUL_ANS_PAIRS,     /* kv:pairs: an iterator over the records */
    CONSUL_ANS_SNAPSHOT,  /* snapshot:save: bytes, or true when written to a file */
    CONSUL_ANS_CUSTOM     /* the op's finish function shapes it */
};

#define CONSUL_CALL_STATUS_DATA 1  /* 429 and 503 carry an answer (agent service health) */
#define CONSUL_CALL_ABSENT_OK 2    /* a 404 on this call is "absent" even if not a GET */
#define CONSUL_CALL_EMPTY_BODY_OBJECT 4  /* no body given: send {} (Consul wants one) */
#define CONSUL_CALL_HASH_INDEX 8   /* its index is a hash (event list): any uint64 */
#define CONSUL_CALL_FINISH_ALL 16  /* CONSUL_ANS_CUSTOM: its finish shapes failures too */

typedef struct consul_op consul_op;
/* Pushes an op's results once its machine is done; returns how many. May raise (memory). */
typedef int (*consul_finish)(lua_State *L, consul_op *op);

struct consul_op {
    consul_mach m;
    int answer;              /* enum consul_answer */
    int json_flags;
    int flags;               /* CONSUL_CALL_* */
    int64_t deadline;        /* the whole call, decoding included */
    consul_finish finish;    /* CONSUL_ANS_CUSTOM */
    int keep[4], nkeep;      /* stack indices of Lua values the op points into: anchored in
                              * its box should it outlive the C call (nginx) */
    FILE *file;              /* snapshot:save into a file (our own stream) */
    int box;                 /* the box's stack index while results are pushed */
    int async;               /* driven from Lua (nginx): kept values live in the box */
    void *drv;               /* the nginx driver's bookkeeping (op.c), when driven from Lua */
    consul_lines lines;      /* a stream's lines (agent:monitor in nginx) */
    int overflow;            /* ... held up to max_answer: more came, unread */
};

/* Argument errors, raised at the user's line: the first caller outside this module (the
 * Lua half, lua/consul.lua, included: with_lock, the nginx driver), naming the function the
 * user called ("bad argument #1 to 'with_lock' (...)"). They do not return. */
int consul_argerror(lua_State *L, int arg, const char *msg);
int consul_error(lua_State *L, const char *fmt, ...);
void consul_checktype(lua_State *L, int arg, int t);
const char *consul_checkstring(lua_State *L, int arg, size_t *len);
void consul_checkargs(lua_State *L, int max, const char *what);  /* "too many arguments" */

consul_client *consul_checkclient(lua_State *L, int idx);  /* raises if closed */
/* self (arg 1) is a group object: checks it, sets the stack to n values and pushes its
 * client at n + 1 (it stays alive then). */
consul_client *consul_group_client(lua_State *L, int n);
void consul_client_open(lua_State *L);  /* module table at -1 */

/* A new op for client c, boxed in a userdata pushed on the stack (freed with it, should
 * anything raise). The op holds c's conf, not c: closing c meanwhile is harmless. */
consul_op *consul_op_new(lua_State *L, consul_client *c);
/* The client closes: its conf keeps no finished call's memory any more. */
void consul_op_drop_spare(lua_State *L, consul_conf *cf);
/* Parses per-call options (table at idx, or none) into op's query, token and wait. Raises on
 * unknown names or bad values. Applies the client's dc and consistency unless the call
 * names its own. for_request: c:request's own query/body/headers are skipped. */
void consul_op_opts(lua_State *L, int idx, consul_op *op, int for_request);
/* Appends name[=escaped value] to op's query (value NULL: a bare flag). */
void consul_op_query(lua_State *L, consul_op *op, const char *name, const char *v, size_t n);
void consul_op_path(lua_State *L, consul_op *op, const char *s);
/* Appends the string argument arg, escaped (a KV key keeps its slashes). */
void consul_op_path_arg(lua_State *L, consul_op *op, int arg, int keep_slash);
/* The op points into the Lua value at stack index idx (a body it sends as it is): it stays
 * on the stack for a blocking call, and is anchored in the op's box for the nginx driver. */
void consul_op_keep(lua_State *L, consul_op *op, int idx);
/* Pushes kept value i (0-based, in keep order), where the op can reach it now. */
void consul_op_kept(lua_State *L, consul_op *op, int i);
/* Raises when s[0..n) holds a NUL byte: what for names the argument. */
void consul_check_nul(lua_State *L, const char *s, size_t n, int arg, const char *what);
/* Runs the op (its box at stack index box; what is above goes) and returns its results: in
 * nginx, where the caller may yield, returns the op for the Lua driver (lua/consul.lua). */
int consul_op_call(lua_State *L, consul_client *c, consul_op *op, int box);
/* The same over handle h (a lock's own, its client closed); c NULL: nothing recycled. */
int consul_op_call_on(lua_State *L, consul_client *c, consul_http *h, consul_op *op, int box);
/* 1 when a call here goes to the nginx driver (inside nginx, where the caller may yield). */
int consul_op_async(lua_State *L);
/* A sink cutting a stream's body into op->lines (sink_ud: the op). */
int consul_op_lines_sink(void *ud, const char *p, size_t n);
/* The results of a finished single call: result, err, meta. */
int consul_op_results(lua_State *L, consul_op *op);
void consul_push_meta(lua_State *L, const consul_resp *rs);
/* Tells the collector of bytes of memory it cannot see, about to be held by (or made into) a
 * Lua object: a step for their size, unless the collector is stopped (a stopped one stays
 * stopped and collects nothing). Runs finalizers like any allocation: call it where C holds
 * nothing borrowed. */
void consul_gc_hint(lua_State *L, size_t bytes);
/* nil, msg, meta */
int consul_push_failure(lua_State *L, const char *msg, const consul_resp *rs);
int consul_push_op_failure(lua_State *L, consul_op *op);
void consul_op_open(lua_State *L);  /* module table at -1 */

/* ---- routes.c, kv.c, stream.c ------------------------------------------------------ */

void consul_routes_open(lua_State *L);  /* module table at -1 */
void consul_stream_open(lua_State *L);  /* the groups table at -1 */
void consul_kv_open(lua_State *L);      /* the kv group's method table at -1 */
/* kv:pairs's iterator over the records table at -1 (replaced). */
void consul_kv_pairs_iter(lua_State *L);

#pragma GCC visibility pop

#endif
