/*
 * fakeserver.c: a tiny misbehaving HTTP server for the error specs (spec/errors_spec.lua).
 * Only for what a real Consul agent never does: answers that stall, broken JSON, connections
 * closed mid-answer. Built by spec/helpers/fakeserver.lua with `cc` into a temp dir.
 *
 *   fakeserver PORTFILE [LIFETIME_SECONDS]
 *
 * Listens on 127.0.0.1 on a free port, writes the port to PORTFILE (atomically, via rename)
 * once it accepts connections, and serves each connection in a forked child. The answer is
 * chosen by the request path: the first of these words found in it picks the mode.
 *
 *   stall      reads the request and never answers (until the peer goes away)
 *   badjson    200, application/json, body {"a":
 *   truncated  200, application/json, body [1,2
 *   close      200, Content-Length: 100, sends 9 bytes and closes the connection
 *   nothing    closes the connection without sending a byte
 *   notbase64  200, application/json, KV records whose "Value" is not base64 (see below)
 *   anything else: 200, application/json, body [] (the connection is then closed)
 *
 * Every answer carries "Connection: close". Children die with the parent (PR_SET_PDEATHSIG)
 * and after 60 s at most; the parent exits after LIFETIME_SECONDS (default 300), so nothing
 * outlives a spec run that forgot to kill it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
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

static void serve(int fd)
{
    char req[8192];
    size_t len = 0;
    char *path, *end;

    /* The request head; a body (PUT) is not needed to pick the answer. */
    while (len < sizeof req - 1) {
        ssize_t r = read(fd, req + len, sizeof req - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return;
        len += (size_t)r;
        req[len] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL)
            break;
    }
    req[len] = '\0';
    path = strchr(req, ' ');
    path = path ? path + 1 : req;
    end = strchr(path, ' ');
    if (end != NULL)
        *end = '\0';

    if (strstr(path, "stall") != NULL) {
        char sink[1024];
        /* Hold the connection open, answering nothing, until the client gives up. */
        while (read(fd, sink, sizeof sink) > 0)
            ;
    } else if (strstr(path, "badjson") != NULL) {
        answer(fd, "200 OK", "application/json", "{\"a\":", 5);
    } else if (strstr(path, "truncated") != NULL) {
        answer(fd, "200 OK", "application/json", "[1,2", 4);
    } else if (strstr(path, "close") != NULL) {
        answer(fd, "200 OK", "application/json", "[\"0123456", 100);
    } else if (strstr(path, "notbase64") != NULL) {
        /* Consul always base64-encodes Value; these are not: a bad character after three
         * good groups, a bad length, padding in the middle, and one good value. */
        static const char body[] =
            "[{\"Key\":\"a\",\"Value\":\"QUJDREVGR0hJ!KLM\"},"
            "{\"Key\":\"b\",\"Value\":\"QUJD=\"},"
            "{\"Key\":\"c\",\"Value\":\"QQ==QUJD\"},"
            "{\"Key\":\"d\",\"Value\":\"QUJD\"}]";
        answer(fd, "200 OK", "application/json", body, sizeof body - 1);
    } else if (strstr(path, "nothing") != NULL) {
        /* close at once */
    } else {
        answer(fd, "200 OK", "application/json", "[]", 2);
    }
    shutdown(fd, SHUT_WR);
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa;
    socklen_t salen = sizeof sa;
    int one = 1, lfd;
    char tmp[4096];
    FILE *f;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: fakeserver PORTFILE [LIFETIME_SECONDS]\n");
        return 2;
    }
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    signal(SIGPIPE, SIG_IGN);
    alarm(argc == 3 ? (unsigned)atoi(argv[2]) : 300u);

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
            alarm(60);
            serve(fd);
            close(fd);
            _exit(0);
        }
        close(fd);
    }
}
