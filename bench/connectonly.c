/*
 * connectonly.c: what a 1 MiB get would cost if libcurl only made the connection. Not part of
 * `make bench`; it measures a design the module does not have (README, Benchmark).
 *
 *   cc -std=c99 -O2 -Wall -Wextra -o build/connectonly bench/connectonly.c -lcurl
 *   build/connectonly ADDR WAY N
 *
 * GETs /v1/kv/bench/big?raw (a value of 1 MiB, put there first) N times on one connection
 * and prints gets per second and client CPU (getrusage) per get. WAY is one of:
 *   A  curl_easy_perform, the write callback copying each piece into a preallocated buffer:
 *      the raw client's way (bench/rawbench.c)
 *   B  A, then the whole value copied once more into fresh memory: the module's way, where
 *      lua_pushlstring makes the Lua string from the answer buffer
 *   C  CURLOPT_CONNECT_ONLY: the request sent with curl_easy_send, the head received into a
 *      small buffer and the body with curl_easy_recv straight into the answer buffer, then B's
 *      copy into fresh memory: the module's way if it framed HTTP itself, as in nginx
 *   D  C without that last copy: the floor if a Lua string could be made in place
 * Only what the measurement needs: one agent, HTTP, a Content-Length answer.
 */
#define _GNU_SOURCE /* strcasestr */
#include <curl/curl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define VALUE_LEN 1048576u

static char *answer;
static size_t answer_len;
static char *fresh;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    (void)ud;
    if (answer_len + size * n > 2 * VALUE_LEN)
        return 0;
    memcpy(answer + answer_len, p, size * n);
    answer_len += size * n;
    return size * n;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static int die(const char *what)
{
    fprintf(stderr, "connectonly: %s\n", what);
    return 1;
}

/* the copy lua_pushlstring makes: into fresh memory (the last one freed first, as Lua's
 * collector frees the last value before long) */
static void copy_to_fresh(void)
{
    free(fresh);
    fresh = malloc(answer_len + 1);
    if (fresh != NULL) {
        memcpy(fresh, answer, answer_len);
        fresh[answer_len] = '\0';
    }
}

static void wait_for(CURL *e, short ev)
{
    curl_socket_t s;
    struct pollfd p;
    curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &s);
    p.fd = s;
    p.events = ev;
    poll(&p, 1, 5000);
}

/* up to n bytes into p, waiting for them; 0 ok (*got > 0), -1 failed or closed */
static int recv_some(CURL *e, char *p, size_t n, size_t *got)
{
    CURLcode rc;
    while ((rc = curl_easy_recv(e, p, n, got)) == CURLE_AGAIN)
        wait_for(e, POLLIN);
    return rc == CURLE_OK && *got > 0 ? 0 : -1;
}

/* one get, the connect-only way; 0 ok */
static int get_connect_only(CURL *e, const char *req, size_t req_len)
{
    char head[16384];
    size_t sent = 0, got, head_len = 0, want;
    char *end = NULL, *cl;
    while (sent < req_len) {
        CURLcode rc = curl_easy_send(e, req + sent, req_len - sent, &got);
        if (rc == CURLE_AGAIN) {
            wait_for(e, POLLOUT);
            continue;
        }
        if (rc != CURLE_OK)
            return -1;
        sent += got;
    }
    while (end == NULL) {
        if (recv_some(e, head + head_len, sizeof head - 1 - head_len, &got) != 0)
            return -1;
        head_len += got;
        head[head_len] = '\0';
        end = strstr(head, "\r\n\r\n");
        if (end == NULL && head_len == sizeof head - 1)
            return -1;  /* a head over 16 KiB */
    }
    if ((cl = strcasestr(head, "\ncontent-length:")) == NULL)
        return -1;
    want = strtoul(cl + 16, NULL, 10);
    end += 4;
    answer_len = head_len - (size_t)(end - head);
    if (want > 2 * VALUE_LEN || answer_len > want)
        return -1;
    memcpy(answer, end, answer_len);
    while (answer_len < want) {
        if (recv_some(e, answer + answer_len, want - answer_len, &got) != 0)
            return -1;
        answer_len += got;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char url[256], req[256];
    size_t req_len;
    CURL *e;
    long n, i;
    char way;
    int connect_only, rc = 1;
    double t0 = 0, c0 = 0;
    if (argc != 4 || strlen(argv[2]) != 1 || strchr("ABCD", argv[2][0]) == NULL ||
        (n = strtol(argv[3], NULL, 10)) <= 0)
        return die("usage: connectonly ADDR A|B|C|D N");
    way = argv[2][0];
    connect_only = way == 'C' || way == 'D';
    if ((answer = malloc(2 * VALUE_LEN)) == NULL || curl_global_init(CURL_GLOBAL_ALL) != 0 ||
        (e = curl_easy_init()) == NULL)
        return die("out of memory");
    snprintf(url, sizeof url, "http://%s/v1/kv/bench/big?raw", argv[1]);
    snprintf(req, sizeof req, "GET /v1/kv/bench/big?raw HTTP/1.1\r\nHost: %s\r\n\r\n", argv[1]);
    req_len = strlen(req);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    if (connect_only) {
        curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
        if (curl_easy_perform(e) != CURLE_OK) {
            die("connect failed");
            goto out;
        }
    }
    for (i = -3; i < n; i++) {  /* 3 untimed gets first */
        if (i == 0) {
            t0 = now();
            c0 = cpu();
        }
        answer_len = 0;
        if (connect_only ? get_connect_only(e, req, req_len) != 0
                         : curl_easy_perform(e) != CURLE_OK) {
            die("a get failed");
            goto out;
        }
        if (answer_len != VALUE_LEN) {
            die("the value is not 1 MiB (put bench/big first)");
            goto out;
        }
        if (way == 'B' || way == 'C')
            copy_to_fresh();
    }
    printf("%c %.0f gets/s %.1f us cpu/get\n", way, (double)n / (now() - t0),
           (cpu() - c0) / (double)n * 1e6);
    rc = 0;
out:
    curl_easy_cleanup(e);
    curl_global_cleanup();
    free(answer);
    free(fresh);
    return rc;
}
