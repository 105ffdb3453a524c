/*
 * fuzz_wire.c: an HTTP/1.1 answer as it arrives over a cosocket or a connect-only libcurl
 * connection, in pieces. The first byte sets how the rest is cut (piece sizes), whether a
 * sink (a stream) takes the body, and whether body bytes are received in place where the
 * parser offers room (consul_wire_room, as http.c's blocking driver does); the parser must
 * end in one answer, one failure, or want more, never read or write past what it got.
 */
#include "fuzz.h"

static int sink(void *ud, const char *p, size_t n)
{
    size_t *total = ud;
    (void)p;
    *total += n;
    return (*total > 100000) ? 1 : 0;  /* a sink may stop it */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    consul_wire w;
    consul_resp rs;
    consul_buf out = CONSUL_BUF_INIT;
    consul_req rq;
    size_t piece, off = 1, total = 0;
    int r = CONSUL_WIRE_MORE, direct;
    if (size < 1)
        return 0;
    memset(&w, 0, sizeof w);
    memset(&rq, 0, sizeof rq);
    rq.method = "GET";
    if (data[0] & 0x80) {
        rq.sink = sink;
        rq.sink_ud = &total;
    }
    piece = (size_t)(data[0] & 0x1f) + 1;
    direct = (data[0] & 0x20) != 0;
    consul_wire_begin(&w, &rs, &out);
    while (off < size && r == CONSUL_WIRE_MORE) {
        size_t n = size - off < piece ? size - off : piece;
        char *dst = NULL;
        size_t room = direct ? consul_wire_room(&w, &rq, &rs, &out, 4096, &dst) : 0;
        if (room > 0) {
            /* into the answer buffer, as a receive would: a write past room is a finding */
            if (n > room)
                n = room;
            memcpy(dst, data + off, n);
            r = consul_wire_took(&w, &rs, &out, n);
        } else {
            /* each piece in a buffer of its own size: a read past it is a finding */
            char *p = malloc(n);
            memcpy(p, data + off, n);
            r = consul_wire_feed(&w, &rq, &rs, &out, 4096, p, n);
            free(p);
        }
        off += n;
    }
    if (r == CONSUL_WIRE_MORE && (data[0] & 0x40))
        r = consul_wire_feed(&w, &rq, &rs, &out, 4096, NULL, 0);  /* the peer closes */
    if (r == CONSUL_WIRE_DONE && rs.body_len > 0)
        (void)rs.body[rs.body_len - 1];
    if (r == CONSUL_WIRE_DONE && rs.body != NULL && rs.body[rs.body_len] != '\0')
        abort();  /* bodies are NUL-terminated */
    consul_wire_free(&w);
    consul_buf_free(&out);
    return 0;
}
