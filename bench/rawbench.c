/*
 * rawbench.c: the baseline of `make bench`: the least a C client can do for each job. One
 * reused libcurl easy handle (one kept-alive connection), the requests a job needs and no
 * more, JSON parsed (cJSON) only where the job's answer is JSON.
 *
 *   build/rawbench ADDR WORKLOAD N [EXTRA]
 *
 * ADDR is host:port of the agent. WORKLOAD is one of the names in the table at the bottom;
 * N the number of timed operations. Every workload first runs a few untimed operations (the
 * connection is made, caches are warm), then times N operations, and prints one line:
 *
 *   ops=N secs=WALL cpu=USER+SYS user=USER sys=SYS rss_kb=VMRSS maxrss_kb=PEAK
 *   agent_cpu=SECS requests=REQUESTS
 *
 * WALL is CLOCK_MONOTONIC and USER/SYS are getrusage(RUSAGE_SELF) around the timed loop only;
 * PEAK is the process's peak resident memory (ru_maxrss); agent_cpu the agent's CPU over the
 * timed loop (/proc/$CONSUL_TEST_PID/stat; -1 when unknown). Exit status is non-zero (with a
 * message on stderr) when any request fails.
 *
 * The handle: CURLOPT_NOSIGNAL, TCP_NODELAY and TCP_KEEPALIVE, reads and sends of up to
 * 512 KiB a system call (see recv_buffer), no Accept-Encoding (no
 * compression), the "Expect:" header removed (no 100-continue round trip). A PUT goes out
 * with CUSTOMREQUEST "PUT" and POSTFIELDS (the caller's bytes, not copied).
 *
 * Jobs: "put" PUT /v1/kv/bench/put/<i mod 1000> (a 100-byte value; answer "true"); "get"
 * GET /v1/kv/bench/list/<i mod 1000>?raw (the value's bytes, nothing to decode); "list" GET
 * ?recurse of 1,000 keys, parsed with cJSON and every Value base64-decoded (the least to hand
 * records over); "session" create ({"TTL":"15s"}, ID parsed) + destroy; "lock" the least lock
 * cycle that does the contract's job (a fence; never takes a key that is not a free lock
 * key), 4 requests: session create, the txn [check-index, lock], the txn [unlock], session
 * destroy (see op_lock); "lock-plain" (information) 4 plain requests without those
 * guarantees: create, PUT ?acquire=<id>&flags=, PUT ?release=<id>&flags=, destroy;
 * "get-spin" (information) the get followed by 3 us of busy client CPU;
 * "lock-go" (information) the 5 requests of Consul's Go algorithm (create, read the key, the
 * "lock" transaction, release, destroy); "big-putget" PUT then GET ?raw of a
 * 1 MiB value (bench/big); "big-get" the GET alone.
 *
 * "handover" (build/rawbench ADDR handover ROUNDS) is not an ops/s workload: it forks a second
 * process and hands bench/handover/lock back and forth ROUNDS times, as bench.lua's module
 * check does (see run_handover below), and prints latency percentiles.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <cJSON.h>
#include <curl/curl.h>

#define NKEYS 1000
#define VALUE_LEN 100
#define BIG_LEN (1 << 20)

/* ---- the connection ------------------------------------------------------- */

typedef struct body {
    char *data;
    size_t len, cap;
} body;

typedef struct bench {
    CURL *easy;
    struct curl_slist *hdr_get;   /* "Expect:" removed */
    struct curl_slist *hdr_body;  /* and Content-Type on bodies */
    struct curl_slist *hdr_json;  /* the same with application/json (lock requests) */
    char base[256];               /* http://ADDR */
    char url[512];
    char errbuf[CURL_ERROR_SIZE];
    body resp;
    char value[VALUE_LEN];
    char *big;                    /* BIG_LEN bytes */
    long expect;                  /* list: the number of records expected */
    long requests;                /* requests sent */
} bench;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    body *b = ud;
    size_t len = size * n;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *d;
        while (cap < b->len + len + 1)
            cap *= 2;
        d = realloc(b->data, cap);
        if (d == NULL)
            return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
    return len;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "rawbench: %s: %s\n", what, why);
    exit(1);
}

/* One request with the given headers (NULL: hdr_get, or hdr_body when there is data); a GET
 * when method is "GET", else CUSTOMREQUEST with POSTFIELDS (empty without data), as the module
 * sends it. Dies on a transport failure; returns the HTTP status. */
static long send_req(bench *b, const char *method, const char *path, const char *query,
                     const char *data, size_t len, struct curl_slist *hdrs)
{
    CURLcode rc;
    long status = 0;
    int n = snprintf(b->url, sizeof b->url, "%s%s%s%s", b->base, path, query ? "?" : "",
                     query ? query : "");
    if (n < 0 || (size_t)n >= sizeof b->url)
        die(path, "URL too long");
    b->resp.len = 0;
    b->errbuf[0] = '\0';
    curl_easy_setopt(b->easy, CURLOPT_URL, b->url);
    b->requests++;
    if (hdrs == NULL)
        hdrs = data == NULL ? b->hdr_get : b->hdr_body;
    curl_easy_setopt(b->easy, CURLOPT_HTTPHEADER, hdrs);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(b->easy, CURLOPT_CUSTOMREQUEST, NULL);
        curl_easy_setopt(b->easy, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(b->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(data ? len : 0));
        curl_easy_setopt(b->easy, CURLOPT_POSTFIELDS, data ? data : "");
        curl_easy_setopt(b->easy, CURLOPT_CUSTOMREQUEST, method);
    }
    rc = curl_easy_perform(b->easy);
    if (rc != CURLE_OK)
        die(b->url, b->errbuf[0] ? b->errbuf : curl_easy_strerror(rc));
    curl_easy_getinfo(b->easy, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

static void expect_200(bench *b, long status)
{
    if (status != 200) {
        char msg[64];
        snprintf(msg, sizeof msg, "HTTP status %ld", status);
        die(b->url, msg);
    }
    if (b->resp.len == 0)
        die(b->url, "empty answer");
}

/* One request; dies unless the answer is a 200. */
static void perform(bench *b, const char *method, const char *path, const char *query,
                    const char *data, size_t len)
{
    expect_200(b, send_req(b, method, path, query, data, len, NULL));
}

/* One request with a JSON body (or none); dies unless the answer is a 200. */
static void perform_json(bench *b, const char *method, const char *path, const char *query,
                         const char *data, size_t len)
{
    expect_200(b, send_req(b, method, path, query, data, len, data ? b->hdr_json : b->hdr_get));
}

/* ---- answers ---------------------------------------------------------------- */

static signed char b64val[256];

static void b64_init(void)
{
    const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int i;
    memset(b64val, -1, sizeof b64val);
    for (i = 0; a[i]; i++)
        b64val[(unsigned char)a[i]] = (signed char)i;
}

/* Decodes in place (base64 only shrinks); returns the length or -1. */
static long b64_decode(char *s)
{
    unsigned v = 0;
    int bits = 0;
    long len = 0;
    size_t i;
    for (i = 0; s[i] != '\0' && s[i] != '='; i++) {
        int d = b64val[(unsigned char)s[i]];
        if (d < 0)
            return -1;
        v = (v << 6) | (unsigned)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            s[len++] = (char)(v >> bits);
            v &= (1u << bits) - 1;
        }
    }
    return len;
}

/* Parses the array of KV records and decodes each Value; returns the number of records. */
static long decode_records(bench *b)
{
    cJSON *root = cJSON_ParseWithLength(b->resp.data, b->resp.len), *rec;
    long n = 0;
    if (!cJSON_IsArray(root))
        die(b->url, "answer is not a JSON array");
    for (rec = root->child; rec != NULL; rec = rec->next) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(rec, "Value");
        if (!cJSON_IsString(v) || b64_decode(v->valuestring) != VALUE_LEN)
            die(b->url, "bad Value in answer");
        n++;
    }
    cJSON_Delete(root);
    return n;
}

/* ---- workloads ------------------------------------------------------------------ */

static char keys[NKEYS][32], putkeys[NKEYS][32];

static void expect_true(bench *b)
{
    if (b->resp.len < 4 || memcmp(b->resp.data, "true", 4) != 0)
        die(b->url, "did not answer true");
}

static void op_put(bench *b, long i)
{
    expect_200(b, send_req(b, "PUT", putkeys[i % NKEYS], NULL, b->value, VALUE_LEN, b->hdr_get));
    expect_true(b);
}

static void op_get(bench *b, long i)
{
    perform(b, "GET", keys[i % NKEYS], "raw", NULL, 0);
    if (b->resp.len != VALUE_LEN)
        die(b->url, "not the 100-byte value");
}

/* "get-spin": the same get, then SPIN_US of the client's CPU (a busy wait) before the next
 * one: what a little more client work per request costs in throughput, and in the agent's
 * CPU per request (bench.lua's information row under get). */
#define SPIN_US 3

static double now(void);

static void op_get_spin(bench *b, long i)
{
    double until;
    op_get(b, i);
    until = now() + SPIN_US / 1e6;
    while (now() < until)
        ;
}

static void op_big_put(bench *b)
{
    expect_200(b, send_req(b, "PUT", "/v1/kv/bench/big", NULL, b->big, BIG_LEN, b->hdr_get));
    expect_true(b);
}

static void op_big_get(bench *b, long i)
{
    (void)i;
    perform(b, "GET", "/v1/kv/bench/big", "raw", NULL, 0);
    if (b->resp.len != BIG_LEN)
        die(b->url, "not the 1 MiB value");
}

static void op_big_putget(bench *b, long i)
{
    op_big_put(b);
    op_big_get(b, i);
}

static void op_list(bench *b, long i)
{
    long n;
    (void)i;
    perform(b, "GET", "/v1/kv/bench/list/", "recurse", NULL, 0);
    n = decode_records(b);
    if (b->expect > 0 && n != b->expect)
        die(b->url, "wrong number of records");
}


/* ---- locks ----------------------------------------------------------------------- */

#define LOCK_FLAGS "3304740253564472344"   /* 0x2ddccbc058a50c18: Consul's lock flags */
#define LOCK_PATH "/v1/kv/bench/lock"
#define SESSION_BODY "{\"Name\":\"Lua lock\",\"TTL\":\"15s\",\"LockDelay\":\"15s\",\"Behavior\":\"release\"}"

/* PUT /v1/session/create; the new ID into id. */
static void session_create(bench *b, char *id, size_t n)
{
    cJSON *root, *v;
    perform_json(b, "PUT", "/v1/session/create", NULL, SESSION_BODY, strlen(SESSION_BODY));
    root = cJSON_ParseWithLength(b->resp.data, b->resp.len);
    v = cJSON_GetObjectItemCaseSensitive(root, "ID");
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= n)
        die(b->url, "no session ID in answer");
    strcpy(id, v->valuestring);
    cJSON_Delete(root);
}

static void session_destroy(bench *b, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/session/destroy/%s", id);
    perform_json(b, "PUT", path, NULL, NULL, 0);
    if (b->resp.len < 4 || memcmp(b->resp.data, "true", 4) != 0)
        die(b->url, "destroy did not answer true");
}

/* GET the key before acquiring: 404, or a lock key (our flags) that nobody holds. Returns the
 * X-Consul-Index when index is wanted (the handover waiter blocks on it), and whether held. */
static int lock_read(bench *b, const char *path, const char *query, uint64_t *index)
{
    long status = send_req(b, "GET", path, query, NULL, 0, NULL);
    int held = 0;
    if (index != NULL) {
        struct curl_header *h;
        if (curl_easy_header(b->easy, "X-Consul-Index", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
            die(b->url, "no X-Consul-Index");
        *index = strtoull(h->value, NULL, 10);
    }
    if (status == 200) {
        cJSON *root = cJSON_ParseWithLength(b->resp.data, b->resp.len);
        cJSON *rec = cJSON_IsArray(root) ? root->child : NULL, *f, *sess;
        f = cJSON_GetObjectItemCaseSensitive(rec, "Flags");
        if (!cJSON_IsNumber(f) || f->valuedouble != (double)3304740253564472344ULL)
            die(b->url, "the key is not a lock");
        sess = cJSON_GetObjectItemCaseSensitive(rec, "Session");
        held = cJSON_IsString(sess) && sess->valuestring[0] != '\0';
        cJSON_Delete(root);
    } else if (status != 404) {
        expect_200(b, status);
    }
    return held;
}

/* PUT /v1/txn with Verb "lock": dies unless taken; returns the fence (ModifyIndex). */
static uint64_t lock_take(bench *b, const char *key, const char *id)
{
    char body[256];
    cJSON *root, *kv, *mi;
    uint64_t fence;
    int n = snprintf(body, sizeof body,
                     "[{\"KV\":{\"Verb\":\"lock\",\"Key\":\"%s\",\"Flags\":" LOCK_FLAGS
                     ",\"Session\":\"%s\",\"Value\":\"\"}}]", key, id);
    perform_json(b, "PUT", "/v1/txn", NULL, body, (size_t)n);
    root = cJSON_ParseWithLength(b->resp.data, b->resp.len);
    kv = cJSON_GetObjectItemCaseSensitive(root, "Results");
    kv = cJSON_IsArray(kv) && kv->child ? cJSON_GetObjectItemCaseSensitive(kv->child, "KV") : NULL;
    mi = cJSON_GetObjectItemCaseSensitive(kv, "ModifyIndex");
    if (!cJSON_IsNumber(mi))
        die(b->url, "no ModifyIndex in the txn answer");
    fence = (uint64_t)mi->valuedouble;
    cJSON_Delete(root);
    return fence;
}

static void lock_release(bench *b, const char *path, const char *id)
{
    char query[128];
    snprintf(query, sizeof query, "release=%s&flags=" LOCK_FLAGS, id);
    perform_json(b, "PUT", path, query, "", 0);
    if (b->resp.len < 4 || memcmp(b->resp.data, "true", 4) != 0)
        die(b->url, "release did not answer true");
}

/* Consul's Go algorithm (and the module's first acquire of a key): 5 requests. */
static void op_lock_go(bench *b, long i)
{
    char id[64];
    (void)i;
    session_create(b, id, sizeof id);
    if (lock_read(b, LOCK_PATH, NULL, NULL))
        die(LOCK_PATH, "held by someone else");
    if (lock_take(b, "bench/lock", id) == 0)
        die(LOCK_PATH, "fence 0");
    lock_release(b, LOCK_PATH, id);
    session_destroy(b, id);
}

/* A session made and ended: create (the least body) and destroy. */
static void op_session(bench *b, long i)
{
    static const char def[] = "{\"TTL\":\"15s\"}";
    cJSON *root, *v;
    (void)i;
    perform_json(b, "PUT", "/v1/session/create", NULL, def, sizeof def - 1);
    root = cJSON_ParseWithLength(b->resp.data, b->resp.len);
    v = cJSON_GetObjectItemCaseSensitive(root, "ID");
    if (!cJSON_IsString(v))
        die(b->url, "no session ID in answer");
    session_destroy(b, v->valuestring);
    cJSON_Delete(root);
}

/* A lock cycle without the contract's guarantees (information): 4 plain requests, create,
 * ?acquire=, ?release=, destroy. No fence (both PUTs answer only "true"), and the acquire
 * would take any free key, a lock or not (it sets the flags). */
static void op_lock_plain(bench *b, long i)
{
    char id[64], query[128];
    (void)i;
    session_create(b, id, sizeof id);
    snprintf(query, sizeof query, "acquire=%s&flags=" LOCK_FLAGS, id);
    perform_json(b, "PUT", LOCK_PATH, query, "", 0);
    if (b->resp.len < 4 || memcmp(b->resp.data, "true", 4) != 0)
        die(b->url, "acquire did not answer true");
    lock_release(b, LOCK_PATH, id);
    session_destroy(b, id);
}

/* The txn answer's last result's KV.ModifyIndex (dies if there is none). */
static uint64_t txn_index(bench *b)
{
    cJSON *root = cJSON_ParseWithLength(b->resp.data, b->resp.len), *kv, *mi;
    uint64_t index;
    kv = cJSON_GetObjectItemCaseSensitive(root, "Results");
    kv = cJSON_IsArray(kv) && kv->child ? kv->child : NULL;
    while (kv != NULL && kv->next != NULL)
        kv = kv->next;
    mi = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(kv, "KV"), "ModifyIndex");
    if (!cJSON_IsNumber(mi) || mi->valuedouble < 1)
        die(b->url, "no ModifyIndex in the txn answer");
    index = (uint64_t)mi->valuedouble;
    cJSON_Delete(root);
    return index;
}

/*
 * The least lock cycle that does the contract's job (API.md: a fence, the key's ModifyIndex
 * with our session in it; a key that is not a free lock key is never taken), 4 requests:
 * session create; PUT /v1/txn [check-index at the index the last release left, lock] (the
 * check makes the take safe without reading the key first, the lock result is the fence);
 * PUT /v1/txn [unlock] (its result is the index the next take checks: a plain ?release=
 * answers only "true"); session destroy. A plain ?acquire= answers only "true" too, so no
 * fence without a transaction or a fifth request; and without a check or a read it would
 * take a key that is not a lock (it sets the flags). The first index comes from a GET,
 * untimed (in the warm-up).
 */
static uint64_t fence_index;

static void op_lock(bench *b, long i)
{
    char id[64], body[512];
    uint64_t fence;
    long status;
    int n;
    (void)i;
    if (fence_index == 0) {  /* warm-up only: make the key a free lock key, read its index */
        cJSON *root, *mi;
        op_lock_go(b, i);
        expect_200(b, send_req(b, "GET", LOCK_PATH, NULL, NULL, 0, NULL));
        root = cJSON_ParseWithLength(b->resp.data, b->resp.len);
        mi = cJSON_IsArray(root) && root->child
                 ? cJSON_GetObjectItemCaseSensitive(root->child, "ModifyIndex") : NULL;
        if (!cJSON_IsNumber(mi))
            die(b->url, "no ModifyIndex");
        fence_index = (uint64_t)mi->valuedouble;
        cJSON_Delete(root);
    }
    session_create(b, id, sizeof id);
    n = snprintf(body, sizeof body,
                 "[{\"KV\":{\"Verb\":\"check-index\",\"Key\":\"bench/lock\",\"Index\":%llu}},"
                 "{\"KV\":{\"Verb\":\"lock\",\"Key\":\"bench/lock\",\"Flags\":" LOCK_FLAGS
                 ",\"Session\":\"%s\",\"Value\":\"\"}}]", (unsigned long long)fence_index, id);
    status = send_req(b, "PUT", "/v1/txn", NULL, body, (size_t)n, b->hdr_json);
    expect_200(b, status);
    /* results: check-index's entry (as it was), then the lock's: the fence */
    fence = txn_index(b);
    if (fence <= fence_index)
        die(b->url, "the fence did not grow");
    n = snprintf(body, sizeof body,
                 "[{\"KV\":{\"Verb\":\"unlock\",\"Key\":\"bench/lock\",\"Flags\":" LOCK_FLAGS
                 ",\"Session\":\"%s\",\"Value\":\"\"}}]", id);
    status = send_req(b, "PUT", "/v1/txn", NULL, body, (size_t)n, b->hdr_json);
    expect_200(b, status);
    fence_index = txn_index(b);
    session_destroy(b, id);
}

/*
 * The workloads: name (as bench.lua passes it), one operation, untimed warm-up operations.
 * An operation may send several requests (the lock cycles send 5 and 4); ops/s counts
 * operations.
 */
typedef struct workload {
    const char *name;
    void (*op)(bench *b, long i);
    long warmup;
} workload;

static const workload workloads[] = {
    { "put", op_put, 50 },
    { "get", op_get, 50 },
    { "get-spin", op_get_spin, 50 },
    { "list", op_list, 3 },
    { "session", op_session, 10 },
    { "lock", op_lock, 10 },
    { "lock-plain", op_lock_plain, 10 },
    { "lock-go", op_lock_go, 10 },
    { "big-putget", op_big_putget, 3 },
    { "big-get", op_big_get, 3 },
    { NULL, NULL, 0 }
};

/* ---- measuring -------------------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double tv(struct timeval t)
{
    return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

static long rss_kb(void)
{
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* The agent's CPU seconds so far (user + sys, from /proc/PID/stat), or -1. */
static double agent_cpu(void)
{
    const char *pid = getenv("CONSUL_TEST_PID");
    char path[64], buf[1024], *p;
    unsigned long ut, st;
    size_t n;
    FILE *f;
    if (pid == NULL || *pid == '\0')
        return -1;
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the command's ")": state is field 3; utime and stime are 14 and 15 */
    if ((p = strrchr(buf, ')')) == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* libcurl's read and send sizes per system call. The defaults (16 KiB, 64 KiB) cost a 1 MiB
 * get 64 reads and polls; measured here, sizes above 512 KiB gained less than the rounds'
 * spread on the 1 MiB get and put (README, Benchmark). RAWBENCH_RECV_BUFFER and
 * RAWBENCH_SEND_BUFFER (bytes) set others, to look at that curve again. */
static long recv_buffer = 512L * 1024, send_buffer = 512L * 1024;

static long env_size(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? strtol(v, NULL, 10) : dflt;
}

/* The handle, set up as the module sets up its own. */
static void setup(bench *b, const char *addr)
{
    if (snprintf(b->base, sizeof b->base, "http://%s", addr) >= (int)sizeof b->base)
        die(addr, "address too long");
    if ((b->easy = curl_easy_init()) == NULL)
        die("libcurl", "cannot initialise");
    b->hdr_get = curl_slist_append(NULL, "Expect:");
    b->hdr_body = curl_slist_append(NULL, "Expect:");
    b->hdr_json = curl_slist_append(NULL, "Expect:");
    if (b->hdr_get == NULL || b->hdr_body == NULL || b->hdr_json == NULL ||
        curl_slist_append(b->hdr_body, "Content-Type: application/octet-stream") == NULL ||
        curl_slist_append(b->hdr_json, "Content-Type: application/json") == NULL)
        die("libcurl", "out of memory");
    curl_easy_setopt(b->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(b->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(b->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(b->easy, CURLOPT_BUFFERSIZE, recv_buffer);
    curl_easy_setopt(b->easy, CURLOPT_UPLOAD_BUFFERSIZE, send_buffer);
    curl_easy_setopt(b->easy, CURLOPT_ERRORBUFFER, b->errbuf);
    curl_easy_setopt(b->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(b->easy, CURLOPT_WRITEDATA, &b->resp);
    curl_easy_setopt(b->easy, CURLOPT_TIMEOUT_MS, 15000L);  /* blocking reads wait up to 10 s */
}

static void teardown(bench *b)
{
    curl_slist_free_all(b->hdr_get);
    curl_slist_free_all(b->hdr_body);
    curl_slist_free_all(b->hdr_json);
    curl_easy_cleanup(b->easy);
    free(b->resp.data);
}

/* ---- lock hand-over between two processes --------------------------------------------
 *
 * The same protocol as bench.lua's "handover" check: process 0 takes bench/handover/lock,
 * forks process 1, and in round r (1..R) the holder is process 0 when r is odd, else 1. The
 * waiter first waits until the other process holds the lock (after its own release of the
 * last round the other may still be taking it), writes bench/handover/ready = r, acquires as the module does (session create,
 * read the key, blocking reads until nobody holds it, the "lock" transaction) and records
 * t_acquired. The holder waits (blocking reads) until ready = r, sleeps 20 ms so the waiter
 * is surely in its blocking read, records t_call, releases (PUT ?release=, session destroy)
 * and records t_release. Latency = t_acquired - t_release (the measure: release has
 * returned) and t_acquired - t_call (from the start of the release).
 */

#define HO_PATH "/v1/kv/bench/handover/lock"
#define HO_READY "/v1/kv/bench/handover/ready"

typedef struct ho_times {
    double *call, *rel, *acq;  /* per round, 1..R; 0 where this process did not record */
} ho_times;

static void ho_loop(bench *b, int me, long rounds, char *id, ho_times *t)
{
    uint64_t ready_idx = 0;
    long r;
    for (r = 1; r <= rounds; r++) {
        int holder = r % 2 == 1 ? 0 : 1;
        double give_up = now() + 30;
        if (holder == me) {
            char want[32], query[96];
            snprintf(want, sizeof want, "%ld", r);
            for (;;) {
                struct curl_header *h;
                long st;
                snprintf(query, sizeof query, "raw&index=%llu&wait=10s",
                         (unsigned long long)ready_idx);
                st = send_req(b, "GET", HO_READY, query, NULL, 0, NULL);
                if (st != 200 && st != 404)
                    expect_200(b, st);
                if (curl_easy_header(b->easy, "X-Consul-Index", 0, CURLH_HEADER, -1, &h) ==
                    CURLHE_OK)
                    ready_idx = strtoull(h->value, NULL, 10);
                if (st == 200 && b->resp.len == strlen(want) &&
                    memcmp(b->resp.data, want, b->resp.len) == 0)
                    break;
                if (now() > give_up)
                    die(HO_READY, "the waiter never became ready");
            }
            {
                struct timespec ts = { 0, 20 * 1000000L };
                nanosleep(&ts, NULL);
            }
            t->call[r] = now();
            lock_release(b, HO_PATH, id);
            session_destroy(b, id);
            t->rel[r] = now();
        } else {
            char val[32], query[96];
            const char *q = NULL;  /* the first read does not block */
            uint64_t idx;
            int n = snprintf(val, sizeof val, "%ld", r);
            /* queue behind the other process: wait until it holds the lock (it may still be
             * taking it after our own release of the last round) */
            while (!lock_read(b, HO_PATH, q, &idx)) {
                snprintf(query, sizeof query, "index=%llu&wait=10s", (unsigned long long)idx);
                q = query;
                if (now() > give_up)
                    die(HO_PATH, "the other process never took the lock");
            }
            q = NULL;
            perform(b, "PUT", HO_READY, NULL, val, (size_t)n);
            session_create(b, id, 64);
            while (lock_read(b, HO_PATH, q, &idx)) {
                snprintf(query, sizeof query, "index=%llu&wait=10s", (unsigned long long)idx);
                q = query;
                if (now() > give_up)
                    die(HO_PATH, "not acquired in 30 s");
            }
            lock_take(b, "bench/handover/lock", id);
            t->acq[r] = now();
        }
    }
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, c = *(const double *)y;
    return a < c ? -1 : a > c;
}

/* median, p99 (nearest rank), min, max of n values (sorts them) */
static void pct(double *v, long n, double out[4])
{
    long k = (long)(0.99 * (double)n + 0.999999);
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    out[0] = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    out[1] = v[(k < 1 ? 1 : k) - 1];
    out[2] = v[0];
    out[3] = v[n - 1];
}

static int run_handover(const char *addr, long rounds)
{
    bench b;
    ho_times mine, theirs;
    size_t sz = (size_t)(rounds + 1) * sizeof(double);
    double *lat = malloc(sz), *lat_call = malloc(sz), s1[4], s2[4], t0;
    char id[64];
    int fd[2], status;
    long r, got;
    pid_t pid;

    mine.call = calloc(1, sz), mine.rel = calloc(1, sz), mine.acq = calloc(1, sz);
    theirs.call = calloc(1, sz), theirs.rel = calloc(1, sz), theirs.acq = calloc(1, sz);
    if (!lat || !lat_call || !mine.call || !mine.rel || !mine.acq || !theirs.call ||
        !theirs.rel || !theirs.acq)
        die("handover", "out of memory");

    memset(&b, 0, sizeof b);
    setup(&b, addr);
    perform(&b, "PUT", HO_READY, NULL, "0", 1);
    /* process 0 holds first */
    session_create(&b, id, sizeof id);
    if (lock_read(&b, HO_PATH, NULL, NULL))
        die(HO_PATH, "held by someone else");
    lock_take(&b, "bench/handover/lock", id);

    if (pipe(fd) != 0)
        die("handover", "pipe failed");
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        die("handover", "fork failed");
    if (pid == 0) {
        bench c;
        char cid[64];
        close(fd[0]);
        memset(&c, 0, sizeof c);
        setup(&c, addr);
        ho_loop(&c, 1, rounds, cid, &mine);
        if (rounds % 2 == 1) {  /* process 1 holds after the last round */
            lock_release(&c, HO_PATH, cid);
            session_destroy(&c, cid);
        }
        if (write(fd[1], mine.call, sz) != (ssize_t)sz || write(fd[1], mine.rel, sz) != (ssize_t)sz ||
            write(fd[1], mine.acq, sz) != (ssize_t)sz)
            die("handover", "write failed");
        teardown(&c);
        _exit(0);
    }
    close(fd[1]);
    t0 = now();
    ho_loop(&b, 0, rounds, id, &mine);
    if (rounds % 2 == 0) {
        lock_release(&b, HO_PATH, id);
        session_destroy(&b, id);
    }
    {
        double *dst[3] = { theirs.call, theirs.rel, theirs.acq };
        int k;
        for (k = 0; k < 3; k++) {
            size_t off = 0;
            while (off < sz) {
                ssize_t w = read(fd[0], (char *)dst[k] + off, sz - off);
                if (w <= 0)
                    die("handover", "the second process failed");
                off += (size_t)w;
            }
        }
    }
    close(fd[0]);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("handover", "the second process failed");
    for (r = 1, got = 0; r <= rounds; r++) {
        ho_times *h = r % 2 == 1 ? &mine : &theirs, *w = r % 2 == 1 ? &theirs : &mine;
        lat[got] = w->acq[r] - h->rel[r];
        lat_call[got] = w->acq[r] - h->call[r];
        got++;
    }
    pct(lat, got, s1);
    pct(lat_call, got, s2);
    printf("rounds=%ld secs=%.3f median_us=%.1f p99_us=%.1f min_us=%.1f max_us=%.1f "
           "call_median_us=%.1f call_p99_us=%.1f call_min_us=%.1f call_max_us=%.1f\n",
           got, now() - t0, s1[0] * 1e6, s1[1] * 1e6, s1[2] * 1e6, s1[3] * 1e6, s2[0] * 1e6,
           s2[1] * 1e6, s2[2] * 1e6, s2[3] * 1e6);
    teardown(&b);
    free(lat), free(lat_call);
    free(mine.call), free(mine.rel), free(mine.acq);
    free(theirs.call), free(theirs.rel), free(theirs.acq);
    return 0;
}

int main(int argc, char **argv)
{
    bench b;
    const workload *w;
    struct rusage r0, r1;
    double agent0, agent1;
    double t0, t1, user, sys;
    long n, i, req0;

    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s ADDR WORKLOAD N [EXTRA]\nworkloads:", argv[0]);
        for (w = workloads; w->name != NULL; w++)
            fprintf(stderr, " %s", w->name);
        fprintf(stderr, " handover\n(EXTRA: for list, the number of records expected; "
                "handover: N rounds)\n");
        return 2;
    }
    n = strtol(argv[3], NULL, 10);
    if (n <= 0)
        die(argv[3], "N must be a positive number");
    recv_buffer = env_size("RAWBENCH_RECV_BUFFER", recv_buffer);
    send_buffer = env_size("RAWBENCH_SEND_BUFFER", send_buffer);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        die("libcurl", "cannot initialise");
    if (strcmp(argv[2], "handover") == 0) {
        int rc = run_handover(argv[1], n);
        curl_global_cleanup();
        return rc;
    }
    for (w = workloads; w->name != NULL && strcmp(w->name, argv[2]) != 0; w++)
        ;
    if (w->name == NULL)
        die(argv[2], "unknown workload");

    memset(&b, 0, sizeof b);
    b.expect = argc == 5 ? strtol(argv[4], NULL, 10) : 0;
    memset(b.value, 'v', VALUE_LEN);
    if ((b.big = malloc(BIG_LEN)) == NULL)
        die("rawbench", "out of memory");
    for (i = 0; i < BIG_LEN; i++)
        b.big[i] = (char)(i * 7 + (i >> 10));  /* any bytes: NULs, invalid UTF-8 */
    for (i = 0; i < NKEYS; i++) {
        snprintf(keys[i], sizeof keys[i], "/v1/kv/bench/list/%04ld", i);
        snprintf(putkeys[i], sizeof putkeys[i], "/v1/kv/bench/put/%ld", i);
    }
    b64_init();
    setup(&b, argv[1]);

    for (i = 0; i < w->warmup; i++)
        w->op(&b, i);

    agent0 = agent_cpu();
    getrusage(RUSAGE_SELF, &r0);
    req0 = b.requests;
    t0 = now();
    for (i = w->warmup; i < w->warmup + n; i++)  /* the same keys, in the same order, as bench.lua */
        w->op(&b, i);
    t1 = now();
    getrusage(RUSAGE_SELF, &r1);
    agent1 = agent_cpu();

    user = tv(r1.ru_utime) - tv(r0.ru_utime);
    sys = tv(r1.ru_stime) - tv(r0.ru_stime);
    printf("ops=%ld secs=%.6f cpu=%.6f user=%.6f sys=%.6f rss_kb=%ld maxrss_kb=%ld "
           "agent_cpu=%.6f requests=%ld\n", n, t1 - t0, user + sys, user, sys, rss_kb(),
           r1.ru_maxrss, agent0 >= 0 && agent1 >= 0 ? agent1 - agent0 : -1.0,
           b.requests - req0);
    free(b.big);

    teardown(&b);
    curl_global_cleanup();
    return 0;
}
