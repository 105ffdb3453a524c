/*
 * fuzz_stream.c: a streamed answer (a monitor's log lines): chunked bytes through the wire
 * parser into a line buffer with a small bound, lines read as they complete.
 */
#include "fuzz.h"

static int sink(void *ud, const char *p, size_t n)
{
    return consul_lines_add(ud, p, n) != 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    consul_wire w;
    consul_resp rs;
    consul_buf out = CONSUL_BUF_INIT;
    consul_lines lines;
    consul_req rq;
    const char *line;
    size_t len, off = 1, piece;
    int r;
    if (size < 1)
        return 0;
    memset(&w, 0, sizeof w);
    memset(&rq, 0, sizeof rq);
    memset(&lines, 0, sizeof lines);
    lines.max = 512 + (size_t)data[0] * 8;
    piece = (size_t)(data[0] & 0x1f) + 1;
    rq.method = "GET";
    rq.sink = sink;
    rq.sink_ud = &lines;
    consul_wire_begin(&w, &rs, &out);
    r = consul_wire_feed(&w, &rq, &rs, &out, 4096, head, sizeof head - 1);
    while (r == CONSUL_WIRE_MORE && off < size) {
        size_t n = size - off < piece ? size - off : piece;
        r = consul_wire_feed(&w, &rq, &rs, &out, 4096, (const char *)data + off, n);
        off += n;
        while (consul_lines_next(&lines, 0, &line, &len))
            if (len > 0)
                (void)line[len - 1];
    }
    while (consul_lines_next(&lines, 1, &line, &len))
        if (len > 0)
            (void)line[len - 1];
    consul_lines_free(&lines);
    consul_wire_free(&w);
    consul_buf_free(&out);
    return 0;
}
