/*
 * rawbench.c: the baseline of `make bench`. A plain libcurl loop that sends the same HTTP
 * requests as the consul module (same method, path, query, body and headers), so the module
 * can be compared with the least a C client must do.
 *
 *   build/rawbench ADDR WORKLOAD N [EXTRA]
 *
 * ADDR is host:port of the agent. WORKLOAD is one of the names in the table at the bottom;
 * N the number of timed operations. Every workload first runs a few untimed operations (the
 * connection is made, caches are warm), then times N operations, and prints one line:
 *
 *   ops=N secs=WALL cpu=USER+SYS user=USER sys=SYS rss_kb=VMRSS
 *
 * WALL is CLOCK_MONOTONIC and USER/SYS are getrusage(RUSAGE_SELF) around the timed loop only.
 * Exit status is non-zero (with a message on stderr) when any request fails.
 *
 * The handle is set up as the module sets up its own (http.c): one reused easy handle,
 * CURLOPT_NOSIGNAL, TCP_NODELAY and TCP_KEEPALIVE, no Accept-Encoding (no compression),
 * the "Expect:" header removed, and "Content-Type: application/octet-stream" on bodies.
 * A PUT goes out with CUSTOMREQUEST "PUT" and POSTFIELDS, as the module does.
 *
 * Answers: "get" and "list" parse the JSON answer with cJSON and base64-decode every "Value"
 * (the least a client must do to hand a value over); "get-recv" and "list-recv" only receive
 * the whole body (the bare-HTTP floor).
 *
 * Keys (shared with bench.lua): bench/put/<i mod 1000>, bench/list/<0000..0999>.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/time.h>

#include <cJSON.h>
#include <curl/curl.h>

#define NKEYS 1000
#define VALUE_LEN 100

/* ---- the connection ------------------------------------------------------- */

typedef struct body {
    char *data;
    size_t len, cap;
} body;

typedef struct bench {
    CURL *easy;
    struct curl_slist *hdr_get;   /* "Expect:" removed */
    struct curl_slist *hdr_body;  /* and Content-Type on bodies */
    char base[256];               /* http://ADDR */
    char url[512];
    char errbuf[CURL_ERROR_SIZE];
    body resp;
    char value[VALUE_LEN];
    long expect;                  /* list: the number of records expected */
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

/* One request; dies unless the answer is a 200. */
static void perform(bench *b, const char *method, const char *path, const char *query,
                    const char *data, size_t len)
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
    if (data == NULL) {
        curl_easy_setopt(b->easy, CURLOPT_HTTPHEADER, b->hdr_get);
        curl_easy_setopt(b->easy, CURLOPT_CUSTOMREQUEST, NULL);
        curl_easy_setopt(b->easy, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(b->easy, CURLOPT_HTTPHEADER, b->hdr_body);
        curl_easy_setopt(b->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(b->easy, CURLOPT_POSTFIELDS, data);
        curl_easy_setopt(b->easy, CURLOPT_CUSTOMREQUEST, method);
    }
    rc = curl_easy_perform(b->easy);
    if (rc != CURLE_OK)
        die(b->url, b->errbuf[0] ? b->errbuf : curl_easy_strerror(rc));
    curl_easy_getinfo(b->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        char msg[64];
        snprintf(msg, sizeof msg, "HTTP status %ld", status);
        die(b->url, msg);
    }
    if (b->resp.len == 0)
        die(b->url, "empty answer");
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

static void op_put(bench *b, long i)
{
    perform(b, "PUT", putkeys[i % NKEYS], NULL, b->value, VALUE_LEN);
    if (b->resp.len < 4 || memcmp(b->resp.data, "true", 4) != 0)
        die(b->url, "PUT did not answer true");
}

static void op_get(bench *b, long i)
{
    perform(b, "GET", keys[i % NKEYS], NULL, NULL, 0);
    if (decode_records(b) != 1)
        die(b->url, "expected one record");
}

static void op_get_recv(bench *b, long i)
{
    perform(b, "GET", keys[i % NKEYS], NULL, NULL, 0);
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

static void op_list_recv(bench *b, long i)
{
    (void)i;
    perform(b, "GET", "/v1/kv/bench/list/", "recurse", NULL, 0);
}

/*
 * The workloads: name (as bench.lua passes it), one operation, untimed warm-up operations.
 * An operation may send several requests (issue 3's lock cycle will: session create,
 * PUT ?acquire=, PUT ?release=, session destroy); ops/s counts operations.
 */
typedef struct workload {
    const char *name;
    void (*op)(bench *b, long i);
    long warmup;
} workload;

static const workload workloads[] = {
    { "put", op_put, 50 },
    { "get", op_get, 50 },
    { "get-recv", op_get_recv, 50 },
    { "list", op_list, 3 },
    { "list-recv", op_list_recv, 3 },
    /* issue 3: { "lock", op_lock_cycle, 10 }, */
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

int main(int argc, char **argv)
{
    bench b;
    const workload *w;
    struct rusage r0, r1;
    double t0, t1, user, sys;
    long n, i;

    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s ADDR WORKLOAD N [EXTRA]\nworkloads:", argv[0]);
        for (w = workloads; w->name != NULL; w++)
            fprintf(stderr, " %s", w->name);
        fprintf(stderr, "\n(EXTRA: for list, the number of records expected)\n");
        return 2;
    }
    for (w = workloads; w->name != NULL && strcmp(w->name, argv[2]) != 0; w++)
        ;
    if (w->name == NULL)
        die(argv[2], "unknown workload");
    n = strtol(argv[3], NULL, 10);
    if (n <= 0)
        die(argv[3], "N must be a positive number");

    memset(&b, 0, sizeof b);
    b.expect = argc == 5 ? strtol(argv[4], NULL, 10) : 0;
    if (snprintf(b.base, sizeof b.base, "http://%s", argv[1]) >= (int)sizeof b.base)
        die(argv[1], "address too long");
    memset(b.value, 'v', VALUE_LEN);
    for (i = 0; i < NKEYS; i++) {
        snprintf(keys[i], sizeof keys[i], "/v1/kv/bench/list/%04ld", i);
        snprintf(putkeys[i], sizeof putkeys[i], "/v1/kv/bench/put/%ld", i);
    }
    b64_init();

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (b.easy = curl_easy_init()) == NULL)
        die("libcurl", "cannot initialise");
    b.hdr_get = curl_slist_append(NULL, "Expect:");
    b.hdr_body = curl_slist_append(NULL, "Expect:");
    if (b.hdr_get == NULL || b.hdr_body == NULL ||
        curl_slist_append(b.hdr_body, "Content-Type: application/octet-stream") == NULL)
        die("libcurl", "out of memory");
    curl_easy_setopt(b.easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(b.easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(b.easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(b.easy, CURLOPT_ERRORBUFFER, b.errbuf);
    curl_easy_setopt(b.easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(b.easy, CURLOPT_WRITEDATA, &b.resp);
    curl_easy_setopt(b.easy, CURLOPT_TIMEOUT_MS, 10000L);

    for (i = 0; i < w->warmup; i++)
        w->op(&b, i);

    getrusage(RUSAGE_SELF, &r0);
    t0 = now();
    for (i = w->warmup; i < w->warmup + n; i++)  /* the same keys, in the same order, as bench.lua */
        w->op(&b, i);
    t1 = now();
    getrusage(RUSAGE_SELF, &r1);

    user = tv(r1.ru_utime) - tv(r0.ru_utime);
    sys = tv(r1.ru_stime) - tv(r0.ru_stime);
    printf("ops=%ld secs=%.6f cpu=%.6f user=%.6f sys=%.6f rss_kb=%ld\n", n, t1 - t0, user + sys,
           user, sys, rss_kb());

    curl_slist_free_all(b.hdr_get);
    curl_slist_free_all(b.hdr_body);
    curl_easy_cleanup(b.easy);
    free(b.resp.data);
    curl_global_cleanup();
    return 0;
}
