/*
 * fakeserver.c: a tiny misbehaving HTTP server for the specs that need what a real Consul
 * agent never does (spec/errors_spec.lua, spec/hostile_spec.lua): answers that stall, drip
 * or never end, broken framing, broken JSON, answers of the wrong shape, connections closed
 * mid-answer. Built by spec/helpers/fakeserver.lua with `cc` into a temp dir.
 *
 *   fakeserver PORTFILE [LIFETIME_SECONDS [DIR [MODE [CONNECTION_SECONDS]]]]
 *
 * Listens on 127.0.0.1 on a free port, writes the port to PORTFILE (atomically, via rename)
 * once it accepts connections, and serves each connection in a forked child.
 *
 * DIR (optional; "-" for none) holds scripted answers (see "raw" below) and gets
 * DIR/requests.log: every request received, appended as "REQUEST <n>\n", then its n bytes
 * exactly as they came (head and body), then "\n".
 *
 * The answer is chosen by MODE when given ("-" for none; every request of this server then behaves as if
 * its target were MODE, whatever it is: a snapshot or a lock has no path to choose by),
 * else by the request target (path and query): the first of these that it contains picks
 * the mode.
 *
 *   /raw/NAME      (NAME: letters, digits, '_', '-', '.') the exact bytes of DIR/NAME, then
 *                  the connection is closed. Without a file DIR/NAME, a script:
 *                  DIR/NAME.1, DIR/NAME.2, ... answer consecutive requests (counted across
 *                  connections in DIR/NAME.count), each exactly as written, the connection
 *                  kept open for the next request; past the last file the connection is
 *                  closed without a byte.
 *   endlessline    200, Transfer-Encoding: chunked, a body of 'x' without any newline, for
 *                  ever, as fast as the socket takes it
 *   endless        200, Transfer-Encoding: chunked, chunks of lines for ever, as fast as the
 *                  socket takes them
 *   drip           200, Content-Length: 100, a JSON array of 100 bytes, one byte a second
 *   continue       "HTTP/1.1 100 Continue", then nothing (until the peer goes away)
 *   headstall      a valid 200 head with Content-Length: 100, then nothing
 *   /big/N         200, application/json, Content-Length: N (N >= 4), the body a JSON array
 *                  of zeros, streamed in 64 KiB pieces (never held whole)
 *   stall          reads the request and never answers (until the peer goes away)
 *   badjson        200, application/json, body {"a":
 *   truncated      200, application/json, body [1,2
 *   close          200, Content-Length: 100, sends 9 bytes and closes the connection
 *   notbase64      200, application/json, KV records whose "Value" is not base64 (see below)
 *   nothing        closes the connection without sending a byte
 *   anything else: 200, application/json, body [] (the connection is then closed)
 *
 * Every built-in answer carries "Connection: close". Children die with the parent
 * (PR_SET_PDEATHSIG) and after CONNECTION_SECONDS (default 60) at most: a stall, a drip or an
 * endless answer then ends with the connection, so that even a client that never gives up
 * returns. The parent exits after LIFETIME_SECONDS (default 300), so nothing outlives a spec
 * run that forgot to kill it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dir;  /* DIR, or NULL */

/* 0 when all n bytes went out; -1 when the peer is gone. */
static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_str(int fd, const char *s)
{
    return write_all(fd, s, strlen(s));
}

static void answer(int fd, const char *status, const char *type, const char *body,
                   long content_length)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %ld\r\n"
                     "X-Consul-Index: 7\r\nX-Consul-Knownleader: true\r\n"
                     "X-Consul-Lastcontact: 0\r\nConnection: close\r\n\r\n",
                     status, type, content_length);
    write_all(fd, head, (size_t)n);
    write_all(fd, body, strlen(body));
}

/* Reads until the peer goes away (or for ever): a stall. */
static void hold(int fd)
{
    char sink[4096];
    ssize_t r;
    while ((r = read(fd, sink, sizeof sink)) > 0 || (r < 0 && errno == EINTR))
        ;
}

/* ---- requests ---------------------------------------------------------------- */

#define REQ_MAX (1 << 20)

typedef struct {
    char *buf;          /* received, not yet consumed */
    size_t len;
    char target[8192];  /* the request target of the last request */
} conn;

static char *find_blank(char *p, size_t n)
{
    size_t i;
    for (i = 0; i + 3 < n; i++)
        if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
            return p + i;
    return NULL;
}

/* The value of Content-Length in a head (0 when there is none). */
static size_t content_length(const char *head, size_t n)
{
    const char *p = head, *end = head + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        if (l > 15 && strncasecmp(p, "Content-Length:", 15) == 0)
            return (size_t)strtoull(p + 15, NULL, 10);
        p += l + 1;
    }
    return 0;
}

static void log_request(const char *p, size_t n)
{
    char path[4096], hdr[64];
    int fd, k;
    char *rec;
    if (dir == NULL)
        return;
    snprintf(path, sizeof path, "%s/requests.log", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0)
        return;
    k = snprintf(hdr, sizeof hdr, "REQUEST %zu\n", n);
    rec = malloc((size_t)k + n + 1);
    if (rec != NULL) {
        /* one write: records of concurrent connections do not interleave */
        memcpy(rec, hdr, (size_t)k);
        memcpy(rec + k, p, n);
        rec[(size_t)k + n] = '\n';
        write_all(fd, rec, (size_t)k + n + 1);
        free(rec);
    }
    close(fd);
}

/* Reads one whole request (head and Content-Length body) and logs it; its target goes to
 * c->target. 0 ok; -1 when the peer went away (or sent something that is no request). */
static int read_request(int fd, conn *c)
{
    char *blank, *sp, *end;
    size_t head_len, total;
    for (;;) {
        blank = find_blank(c->buf, c->len);
        if (blank != NULL) {
            head_len = (size_t)(blank - c->buf) + 4;
            total = head_len + content_length(c->buf, head_len);
            if (total > REQ_MAX)
                return -1;
            if (c->len >= total)
                break;
        }
        if (c->len >= REQ_MAX)
            return -1;
        {
            ssize_t r = read(fd, c->buf + c->len, REQ_MAX - c->len);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return -1;
            c->len += (size_t)r;
        }
    }
    log_request(c->buf, total);
    /* "GET /target HTTP/1.1" */
    sp = memchr(c->buf, ' ', head_len);
    end = sp != NULL ? memchr(sp + 1, ' ', head_len - (size_t)(sp + 1 - c->buf)) : NULL;
    if (sp != NULL && end != NULL && (size_t)(end - sp - 1) < sizeof c->target) {
        memcpy(c->target, sp + 1, (size_t)(end - sp - 1));
        c->target[end - sp - 1] = '\0';
    } else {
        c->target[0] = '\0';
    }
    memmove(c->buf, c->buf + total, c->len - total);
    c->len -= total;
    return 0;
}

/* ---- scripted answers -------------------------------------------------------- */

/* Sends the file's bytes; 0 sent, -1 no such file. */
static int send_file(int fd, const char *path)
{
    char piece[65536];
    ssize_t r;
    int f = open(path, O_RDONLY);
    if (f < 0)
        return -1;
    while ((r = read(f, piece, sizeof piece)) > 0)
        if (write_all(fd, piece, (size_t)r) != 0)
            break;
    close(f);
    return 0;
}

/* The next number of script NAME, counted across connections (under a lock). */
static long next_step(const char *name)
{
    char path[4096], num[32];
    long n = 0;
    ssize_t r;
    int f;
    snprintf(path, sizeof path, "%s/%s.count", dir, name);
    f = open(path, O_RDWR | O_CREAT, 0644);
    if (f < 0)
        return -1;
    flock(f, LOCK_EX);
    r = pread(f, num, sizeof num - 1, 0);
    if (r > 0) {
        num[r] = '\0';
        n = atol(num);
    }
    n++;
    r = snprintf(num, sizeof num, "%ld\n", n);
    if (ftruncate(f, 0) != 0 || pwrite(f, num, (size_t)r, 0) != r)
        n = -1;
    flock(f, LOCK_UN);
    close(f);
    return n;
}

/* NAME after "/raw/" in target, into name; 0 found. */
static int raw_name(const char *target, char *name, size_t n)
{
    const char *p = strstr(target, "/raw/");
    size_t i = 0;
    if (p == NULL)
        return -1;
    for (p += 5; (isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '.') &&
                 i + 1 < n;
         p++)
        name[i++] = *p;
    name[i] = '\0';
    return i > 0 ? 0 : -1;
}

/* Answers from DIR/NAME or the script DIR/NAME.<k>. 1: keep the connection for the next
 * request; 0: close it. */
static int serve_raw(int fd, const char *name)
{
    char path[4096];
    long k;
    if (dir == NULL)
        return 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (send_file(fd, path) == 0)
        return 0;
    k = next_step(name);
    if (k < 1)
        return 0;
    snprintf(path, sizeof path, "%s/%s.%ld", dir, name, k);
    return send_file(fd, path) == 0 ? 1 : 0;
}

/* ---- endless and slow answers -------------------------------------------------- */

static void serve_endless(int fd, int newlines)
{
    static char chunk[16 + 65536 + 2];
    const size_t size = 65536;
    size_t i, n;
    n = (size_t)snprintf(chunk, sizeof chunk, "%zx\r\n", size);
    for (i = 0; i < size; i++)
        chunk[n + i] = newlines && i % 64 == 63 ? '\n' : 'x';
    memcpy(chunk + n + size, "\r\n", 2);
    if (write_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n") != 0)
        return;
    while (write_all(fd, chunk, n + size + 2) == 0)
        ;
}

static void serve_drip(int fd)
{
    /* 100 bytes: "[ " + 48 x "0," + "0]" */
    char body[101];
    int i;
    memcpy(body, "[ ", 2);
    for (i = 0; i < 48; i++)
        memcpy(body + 2 + 2 * i, "0,", 2);
    memcpy(body + 98, "0]", 2);
    if (write_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      "Content-Length: 100\r\nX-Consul-Index: 7\r\nConnection: close\r\n\r\n") != 0)
        return;
    for (i = 0; i < 100; i++) {
        if (write_all(fd, body + i, 1) != 0)
            return;
        sleep(1);
    }
}

static void serve_big(int fd, unsigned long long n)
{
    static char piece[65536];
    char head[256];
    unsigned long long left;
    size_t i;
    if (n < 4)
        n = 4;
    for (i = 0; i < sizeof piece; i += 2)
        memcpy(piece + i, "0,", 2);
    snprintf(head, sizeof head,
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %llu\r\n"
             "X-Consul-Index: 7\r\nConnection: close\r\n\r\n%s",
             n, n % 2 == 0 ? "[ " : "[");
    if (write_str(fd, head) != 0)
        return;
    /* the middle: pairs "0," (an even count of bytes); the end: "0]" */
    left = n - (n % 2 == 0 ? 2 : 1) - 2;
    while (left > 0) {
        size_t k = left > sizeof piece ? sizeof piece : (size_t)left;
        if (write_all(fd, piece, k) != 0)
            return;
        left -= k;
    }
    write_str(fd, "0]");
}

/* ---- a connection ------------------------------------------------------------ */

/* The answer of one request; 1 when the connection stays open for another. */
static int respond(int fd, const char *target)
{
    char name[256];
    const char *big;

    if (raw_name(target, name, sizeof name) == 0) {
        return serve_raw(fd, name);
    } else if (strstr(target, "endlessline") != NULL) {
        serve_endless(fd, 0);
    } else if (strstr(target, "endless") != NULL) {
        serve_endless(fd, 1);
    } else if (strstr(target, "drip") != NULL) {
        serve_drip(fd);
    } else if (strstr(target, "continue") != NULL) {
        write_str(fd, "HTTP/1.1 100 Continue\r\n\r\n");
        hold(fd);
    } else if (strstr(target, "headstall") != NULL) {
        write_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      "Content-Length: 100\r\nX-Consul-Index: 7\r\n\r\n");
        hold(fd);
    } else if ((big = strstr(target, "/big/")) != NULL) {
        serve_big(fd, strtoull(big + 5, NULL, 10));
    } else if (strstr(target, "stall") != NULL) {
        /* Hold the connection open, answering nothing, until the client gives up. */
        hold(fd);
    } else if (strstr(target, "badjson") != NULL) {
        answer(fd, "200 OK", "application/json", "{\"a\":", 5);
    } else if (strstr(target, "truncated") != NULL) {
        answer(fd, "200 OK", "application/json", "[1,2", 4);
    } else if (strstr(target, "close") != NULL) {
        answer(fd, "200 OK", "application/json", "[\"0123456", 100);
    } else if (strstr(target, "notbase64") != NULL) {
        /* Consul always base64-encodes Value; these are not: a bad character after three
         * good groups, a bad length, padding in the middle, and one good value. */
        static const char body[] =
            "[{\"Key\":\"a\",\"Value\":\"QUJDREVGR0hJ!KLM\"},"
            "{\"Key\":\"b\",\"Value\":\"QUJD=\"},"
            "{\"Key\":\"c\",\"Value\":\"QQ==QUJD\"},"
            "{\"Key\":\"d\",\"Value\":\"QUJD\"}]";
        answer(fd, "200 OK", "application/json", body, sizeof body - 1);
    } else if (strstr(target, "nothing") != NULL) {
        /* close at once */
    } else {
        answer(fd, "200 OK", "application/json", "[]", 2);
    }
    return 0;
}

/* Closes gracefully: our FIN first, then what the peer still sends is read (for 2 s at
 * most), so that unread request bytes do not turn the close into a reset that could take
 * the answer with it. */
static void linger_close(int fd)
{
    char sink[4096];
    struct pollfd pfd;
    int i;
    shutdown(fd, SHUT_WR);
    pfd.fd = fd;
    pfd.events = POLLIN;
    for (i = 0; i < 20; i++) {
        ssize_t r;
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        r = read(fd, sink, sizeof sink);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }
    close(fd);
}

static void serve(int fd, const char *mode)
{
    conn c;
    c.buf = malloc(REQ_MAX);
    c.len = 0;
    if (c.buf == NULL)
        return;
    while (read_request(fd, &c) == 0 && respond(fd, mode != NULL ? mode : c.target))
        ;
    free(c.buf);
    linger_close(fd);
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa;
    socklen_t salen = sizeof sa;
    int one = 1, lfd;
    const char *mode = NULL;
    unsigned conn_seconds = 60;
    char tmp[4096];
    FILE *f;

    if (argc < 2 || argc > 6) {
        fprintf(stderr, "usage: fakeserver PORTFILE [LIFETIME_SECONDS [DIR [MODE "
                        "[CONNECTION_SECONDS]]]]\n");
        return 2;
    }
    if (argc >= 4 && strcmp(argv[3], "-") != 0)
        dir = argv[3];
    if (argc >= 5 && argv[4][0] != '\0' && strcmp(argv[4], "-") != 0)
        mode = argv[4];
    if (argc >= 6 && atoi(argv[5]) > 0)
        conn_seconds = (unsigned)atoi(argv[5]);
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    signal(SIGPIPE, SIG_IGN);
    alarm(argc >= 3 ? (unsigned)atoi(argv[2]) : 300u);

    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0)
        return perror("socket"), 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 64) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &salen) != 0)
        return perror("bind/listen"), 1;

    snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
    f = fopen(tmp, "w");
    if (f == NULL)
        return perror(tmp), 1;
    fprintf(f, "%d\n", ntohs(sa.sin_port));
    if (fclose(f) != 0 || rename(tmp, argv[1]) != 0)
        return perror(argv[1]), 1;

    for (;;) {
        pid_t pid, parent = getpid();
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return perror("accept"), 1;
        }
        pid = fork();
        if (pid == 0) {
            close(lfd);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(0);
            alarm(conn_seconds);
            serve(fd, mode);
            _exit(0);
        }
        close(fd);
    }
}
