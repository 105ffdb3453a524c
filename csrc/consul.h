/*
 * consul.h: internal declarations shared by the C files of the consul module.
 *
 * Layers, bottom up:
 *   buf.c      growable byte buffers, percent-escaping, base64, durations (no Lua, no curl)
 *   http.c     libcurl: one request struct in, one response struct out (no Lua)
 *   json.c     cJSON documents with exact 64-bit integers, and Lua <-> JSON
 *   client.c   the consul.Client userdata, options, per-call options, the generic call path
 *   routes.c   the table of every Consul HTTP route and the generic method serving them
 *   kv.c       the KV methods whose answers need shaping (get, record, list, keys, pairs, put, delete)
 *   stream.c   the streaming routes: agent:monitor, snapshot:save and restore
 *   session.c  the session and request steps of one lock attempt (no Lua)
 *   lock.c     locks: Go's acquire algorithm, release, and the consul.Lock userdata
 *   semaphore.c  semaphores in the Go client's layout (the same userdata)
 *   renew.c    the renewer thread keeping held locks alive, and a lock's reference count
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
#define CONSUL_CLIENT_MT "consul.Client"
#define CONSUL_GROUP_MT_PREFIX "consul.group."

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
int consul_buf_addf(consul_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void consul_buf_reset(consul_buf *b);  /* keeps the memory */
void consul_buf_free(consul_buf *b);

/* Percent-escape every byte but RFC 3986 unreserved ones (and '/' when keep_slash). */
int consul_buf_add_escaped(consul_buf *b, const char *s, size_t n, int keep_slash);
int consul_buf_add_base64(consul_buf *b, const unsigned char *p, size_t n);
/* Decodes s in place in one pass: the length, or -1 with s as it was when it is not base64. */
long consul_base64_decode_inplace(char *s, size_t n);

/* Go duration ("15s", "1m30s", "250ms") to milliseconds; -1 when malformed. */
int64_t consul_duration_ms(const char *s);
int64_t consul_now_ms(void);  /* CLOCK_MONOTONIC */

/* ---- http.c ----------------------------------------------------------- */

/* How a request failed: meta.code in Lua. */
enum consul_code {
    CONSUL_OK = 0,
    CONSUL_ECONNECT,  /* "connect" */
    CONSUL_ETIMEOUT,  /* "timeout" */
    CONSUL_ETLS,      /* "tls" */
    CONSUL_EHTTP,     /* "http": an answer came, with a failing status */
    CONSUL_EDECODE,   /* "decode": an answer came that we cannot read */
    CONSUL_ECLOSED,   /* "closed": the peer closed the connection mid-answer */
    CONSUL_ECONFLICT, /* "conflict": a lock key that is not a lock */
    CONSUL_ENOMEM
};
const char *consul_code_name(int code);

/* Where and how to reach the agent. Immutable once built; shared by reference count
 * between a client and the locks it made, which may outlive it. */
typedef struct consul_conf {
    int refs;               /* atomic */
    char *base_url;         /* "http://127.0.0.1:8500", no trailing slash */
    char *hostport;         /* "127.0.0.1:8500" or the socket path, for messages */
    char *unix_path;        /* NULL unless unix:// */
    char *token;            /* NULL: none */
    char *dc;               /* NULL: the agent's */
    int consistency;        /* 0 default, 1 consistent, 2 stale */
    long timeout_ms;
    int verify;
    char *ca_file, *ca_path, *cert_file, *key_file;
    char *connect_to;       /* "name:port:host:port" for tls_server_name, else NULL */
} consul_conf;

consul_conf *consul_conf_new(void);
consul_conf *consul_conf_retain(consul_conf *cf);
void consul_conf_release(consul_conf *cf);

/* Receives streamed body bytes instead of the response buffer; non-zero aborts. */
typedef int (*consul_sink)(void *ud, const char *p, size_t n);

typedef struct consul_req {
    const char *method;      /* "GET", "PUT", ... */
    const char *path;        /* escaped, "/v1/kv/a%20b" */
    const char *query;       /* "recurse&dc=x" or NULL; appended after '?' */
    const char *token;       /* NULL: the conf's token; "": none */
    const char *body;        /* NULL: no body */
    size_t body_len;
    const char *content_type;
    const struct curl_slist *headers;  /* extra headers or NULL */
    long wait_ms;            /* a blocking query's wait, added to the timeout */
    long timeout_ms;         /* 0: the conf's; -1: none (a stream), only the connect one */
    consul_sink sink;        /* stream the body here when set */
    void *sink_ud;
} consul_req;

typedef struct consul_resp {
    long status;             /* 0 when no answer came */
    int code;                /* enum consul_code */
    const char *body;        /* into the handle's buffer; NUL-terminated */
    size_t body_len;
    uint64_t index;          /* X-Consul-Index */
    int has_index;
    int known_leader;        /* -1 unknown */
    int64_t last_contact;    /* -1 unknown */
    int json;                /* Content-Type says JSON */
    long connects;           /* new connections this request opened */
    char error[400];         /* why, when code != CONSUL_OK and no status came */
    char reason[64];         /* the status line's reason phrase */
} consul_resp;

typedef struct consul_http {
    CURL *easy;
    consul_conf *conf;
    consul_buf url;
    consul_buf body;
    struct curl_slist *slist;   /* per-request headers */
    struct curl_slist *connect_to;
    const consul_req *rq;       /* during perform */
    const consul_req *multi_rq; /* a transfer started on a multi handle, not yet finished */
    long pid;                   /* the process that made easy: a forked child makes its own */
    consul_resp *rs;
    char errbuf[CURL_ERROR_SIZE];
} consul_http;

void consul_http_global_init(void);
/* 0 ok, -1 out of memory. h must be zeroed first; takes a reference to conf. */
int consul_http_init(consul_http *h, consul_conf *conf);
void consul_http_release(consul_http *h);  /* idempotent */
/* Never raises, never touches Lua. Returns rs->code. */
int consul_http_perform(consul_http *h, const consul_req *rq, consul_resp *rs);
/* Step by step on a multi handle (a stream): start; step until it returns 0 (finished, rs
 * filled); or abort. rq must live until then. */
int consul_http_start(consul_http *h, CURLM *m, const consul_req *rq, consul_resp *rs);
int consul_http_step(consul_http *h, CURLM *m, int timeout_ms, consul_resp *rs);
void consul_http_abort(consul_http *h, CURLM *m, consul_resp *rs);
/* Ends a transfer whose CURLMSG_DONE the caller read itself (several on one multi). */
int consul_http_finish(consul_http *h, CURLM *m, CURLcode rc, consul_resp *rs);
/* "consul: METHOD /path: why" for a failed rs, into out. */
void consul_format_failure(char *out, size_t n, const char *method, const char *path,
                           const consul_resp *rs);

/* ---- json.c ------------------------------------------------------------ */

/* A parsed JSON document whose integers are exact. A number below 2^53 is exact as cJSON's
 * double; for a larger one, the first time one is read, every number node's valueint is
 * replaced by the offset of its token in the text (which must stay as it is as long as the
 * document is read), so its digits can be read again. */
typedef struct consul_json {
    cJSON *root;
    const char *text;
    size_t len;
    int indexed;  /* 0 not yet, 1 valueint holds token offsets, -1 cannot (doubles then) */
} consul_json;

int consul_json_parse(consul_json *d, const char *text, size_t len);  /* 0 ok, -1 bad JSON */
void consul_json_free(consul_json *d);
/* Exact value of an integer number node: 0 ok, -1 not an integer that fits 64 bits. */
int consul_json_u64(consul_json *d, const cJSON *n, uint64_t *out);
int consul_json_i64(consul_json *d, const cJSON *n, int64_t *out);

#define CONSUL_JSON_B64VALUE 1   /* "Value" strings are base64: decode / encode them */
#define CONSUL_JSON_DURATIONS 2  /* numbers under TTL / LockDelay are seconds: send "Ns" */
#define CONSUL_JSON_B64PAYLOAD 4 /* an event's "Payload" is base64: decode it */

/* Pushes the Lua value of d->root (or of node). Can raise only for memory. */
void consul_json_push(lua_State *L, consul_json *d, cJSON *node, int flags);
/* Pushes a base64 string node decoded (in place: the node is spent). */
void consul_json_push_b64(lua_State *L, cJSON *n);
/* Appends the JSON of the Lua value at idx to b. Raises (argerror on arg) for values JSON
 * cannot hold. */
void consul_json_encode(lua_State *L, int idx, int arg, consul_buf *b, int flags);
/* uint64 values in Lua: an integer (two's complement above 2^63) on 5.3+, a number on 5.1. */
void consul_push_u64(lua_State *L, uint64_t v);
int consul_to_u64(lua_State *L, int idx, uint64_t *out);  /* 0 ok, -1 not one; takes a
                                                         * decimal string too */
void consul_push_index(lua_State *L, uint64_t v);  /* a string on 5.1 above 2^53 */
void consul_json_open(lua_State *L);          /* creates the two sentinels in the registry */

/* ---- client.c ---------------------------------------------------------- */

typedef struct consul_client {
    consul_conf *conf;
    consul_http http;
    consul_buf path;     /* scratch: the escaped path */
    consul_buf query;    /* scratch: the query string */
    consul_buf enc;      /* scratch: an encoded request body */
    consul_json doc;     /* scratch: the last answer */
    struct curl_slist *headers;  /* scratch: c:request's extra headers */
    int64_t requests, connects;
    int closed;
} consul_client;

/* What one call sends and how its answer is shaped. */
enum consul_answer {
    CONSUL_ANS_AUTO = 0,  /* JSON decoded; other text as a string; empty body: true */
    CONSUL_ANS_ID,        /* the "ID" field of the JSON object */
    CONSUL_ANS_FIRST,     /* the first element of a JSON array; nil when empty */
    CONSUL_ANS_TEXT,      /* the body as a string, whatever its type */
    CONSUL_ANS_NONE       /* push nothing: the caller shapes the answer */
};

#define CONSUL_CALL_STATUS_DATA 1  /* 429 and 503 carry an answer (agent service health) */
#define CONSUL_CALL_ABSENT_OK 2    /* a 404 on this call is "absent" even if not a GET */
#define CONSUL_CALL_EMPTY_BODY_OBJECT 4  /* no body given: send {} (Consul wants one) */

typedef struct consul_call {
    const char *method;
    const char *body;
    size_t body_len;
    const char *content_type;
    const char *token;      /* per-call override or NULL */
    const struct curl_slist *headers;
    long wait_ms;
    int answer;             /* enum consul_answer */
    int json_flags;
    int flags;
    consul_sink sink;
    void *sink_ud;
} consul_call;

consul_client *consul_checkclient(lua_State *L, int idx);  /* raises if closed */
/* *field = a malloc'd copy of s[0..n) (the old one freed); raises when out of memory. */
void consul_set_str(lua_State *L, char **field, const char *s, size_t n);
consul_client *consul_group_client(lua_State *L);          /* self (arg 1) is a group object */
/* Parses per-call options (table at idx, or none) into c->query and call. Raises on unknown
 * names or bad values. Applies the client's dc and consistency unless the call names its own. */
void consul_opts(lua_State *L, int idx, consul_client *c, consul_call *call, int for_request);
/* Appends name[=escaped value] to c->query (value NULL: a bare flag). */
void consul_query_add(lua_State *L, consul_client *c, const char *name, const char *v, size_t n);
void consul_path_begin(lua_State *L, consul_client *c, const char *prefix);
void consul_path_add(lua_State *L, consul_client *c, int arg, int keep_slash);
/* Sends the request in c->path / c->query; pushes result, err, meta and returns 3, or with
 * CONSUL_ANS_NONE on success pushes only meta, leaves the answer in *rs and returns 0. */
int consul_client_call(lua_State *L, consul_client *c, consul_call *call, consul_resp *rs);
void consul_push_meta(lua_State *L, const consul_resp *rs);
int consul_push_failure(lua_State *L, consul_client *c, const consul_call *call,
                        const consul_resp *rs);
void consul_client_open(lua_State *L);  /* module table at -1 */

/* ---- lock.c, renew.c ------------------------------------------------------ */

#define CONSUL_LOCK_MT "consul.Lock"
#define CONSUL_KIND_LOCK 0
/* The longest "/v1/kv/<escaped key>" of a lock: a semaphore's contender and .lock paths add
 * a session ID to it in fixed buffers. */
#define CONSUL_MAX_LOCK_PATH 1000
#define CONSUL_KIND_SEMAPHORE 1  /* key is the prefix; path "/v1/kv/<prefix>/" */

/* A lock's C state. Owned by reference count: the Lua object holds one reference and the
 * renewer another while the lock is registered with it, so a lock collected by Lua is still
 * released. Its handles are made when first needed and freed at release. */
typedef struct consul_lock {
    int refs;                 /* atomic */
    consul_conf *conf;
    consul_http http;         /* renewals and releases; .easy NULL until first needed */
    consul_http watch;        /* the renewer's blocking reads of the key */
    char *key, *path;         /* the raw key; "/v1/kv/<escaped key>" */
    char *value;
    size_t value_len;
    uint64_t flags;           /* CONSUL_LOCK_FLAG or CONSUL_SEMAPHORE_FLAG */
    int kind;                 /* CONSUL_KIND_* */
    int limit;                /* a semaphore's number of holders */
    char session[64];         /* "" when none */
    int own_session;          /* created by the lock: destroyed by it */
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
    uint64_t watch_index;
    consul_req ctl_rq, watch_rq;
    consul_resp ctl_rs, watch_rs;
    char ctl_path[128], ctl_query[192], watch_query[128];
    struct consul_lock *next, *prev;
} consul_lock;

/* session.c: one lock attempt's requests over one handle. */
typedef struct attempt {
    consul_http *h;
    consul_json doc;
    consul_resp rs;
    consul_buf body;
    char msg[1024];
    const char *method, *path;  /* of the last request, for messages */
    int64_t *requests, *connects; /* a client's counters to add to, or NULL */
} attempt;
int consul_att_send(attempt *a, const char *method, const char *path, const char *query,
                    const char *body, size_t blen, long wait_ms);
int consul_att_failed(attempt *a);  /* formats a->msg from a->rs; returns the code */
int consul_att_parse(attempt *a);   /* parses a->rs's body into a->doc */
void consul_att_release(attempt *a);
int consul_att_session_create(consul_lock *lk, attempt *a);
/* Destroys a session the lock created; on failure it stays (a->msg says why), to retry. */
int consul_att_session_destroy(consul_lock *lk, attempt *a);
int consul_att_session_renew(consul_lock *lk, attempt *a);
int64_t consul_att_lock_delay(attempt *a, const char *id);  /* another session's, ms; -1 */
/* While an acquire waits: renews a session the lock created when *next_renew is due. */
int consul_att_keep_alive(consul_lock *lk, attempt *a, int64_t now, int64_t *next_renew);
/* How long its next blocking read may wait: to the deadline or the next renewal, 1 ms..5 min. */
long consul_att_wait_ms(const consul_lock *lk, int64_t now, int64_t deadline, int64_t next_renew);
void consul_millisleep(int64_t ms);

consul_lock *consul_lock_new(consul_conf *cf);  /* NULL: out of memory */
void consul_lock_unref(consul_lock *lk);
int consul_lock_handle(consul_lock *lk, consul_http *h);  /* makes h when needed; 0 ok */
void consul_lock_free_handles(consul_lock *lk);           /* not while registered */
/* Hands a lock just acquired to the renewer (renewals, watching the key). 0 ok. */
int consul_renew_start(consul_lock *lk);
/* Takes it back. With release, the renewer releases the lock itself and the call returns
 * at once (a finalizer's way); without, the call returns once the renewer let go of it:
 * 0, or -1 when the process is exiting and the renewer (parked) still has it, its handles
 * in use: then leave them alone. */
int consul_renew_stop(consul_lock *lk, int release);
void consul_renew_atexit_once(void);
/* 1 once the process is past the atexit wait: no lock can be renewed any more. */
int consul_renew_exiting(void);
/* Releases the key and destroys an own session, over h. 0 ok, else rs->code; msg filled. */
int consul_lock_release_now(consul_lock *lk, attempt *a, consul_resp *rs, char *msg,
                            size_t n);
int consul_lock_held(consul_lock *lk);
void consul_lock_open(lua_State *L);  /* module table at -1 */
/* semaphore.c */
int consul_sem_acquire(consul_lock *lk, attempt *a, int64_t wait_ms);
int consul_sem_check(consul_lock *lk, consul_json *doc);  /* 1 still a holder, -1 not */
int consul_sem_release(consul_lock *lk, attempt *a);

/* ---- routes.c ---------------------------------------------------------- */

void consul_routes_open(lua_State *L);  /* module table at -1 */

/* ---- stream.c: agent:monitor, snapshot:save and restore; the groups table at -1 ---- */
void consul_stream_open(lua_State *L);

/* ---- kv.c -------------------------------------------------------------- */

/* The KV methods replacing the generic ones; the group's method table at -1. */
void consul_kv_open(lua_State *L);

#pragma GCC visibility pop

#endif
