/*
 * fuzz_machine.c: the lock and semaphore machines (acquire and release) given hostile
 * answers to every request they make, in order. The first byte picks the machine; then each
 * answer is: a status byte, an index byte, a length byte, that many body bytes. A sleep is
 * not slept. The machine must end (or run out of answers) without a crash, whatever it is
 * told, and a session ID it keeps must be a valid one.
 */
#include "fuzz.h"

#define MAX_STEPS 200

static consul_conf *cf;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const long statuses[] = { 200, 200, 200, 404, 409, 500, 403, 0 };
    consul_lock *lk;
    consul_mach m;
    consul_resp rs;
    size_t off = 1;
    int act, steps = 0, which;
    if (size < 1)
        return 0;
    if (cf == NULL)
        cf = fuzz_conf();
    lk = consul_lock_new(cf);
    which = data[0] & 3;
    lk->kind = (data[0] & 2) ? CONSUL_KIND_SEMAPHORE : CONSUL_KIND_LOCK;
    lk->flags = lk->kind == CONSUL_KIND_SEMAPHORE ? CONSUL_SEMAPHORE_FLAG : CONSUL_LOCK_FLAG;
    lk->limit = 2;
    lk->key = strdup("k/\"x");
    lk->key_len = 4;
    lk->path = strdup(lk->kind == CONSUL_KIND_SEMAPHORE ? "/v1/kv/k/%22x/" : "/v1/kv/k/%22x");
    lk->name = strdup("fuzz \"lock\"");
    lk->ttl_def_ms = lk->lock_delay_ms = 15000;
    if ((data[0] & 4) != 0) {  /* an existing session, as lock:acquire after a loss has */
        strcpy(lk->session, "11111111-2222-3333-4444-555555555555");
        lk->own_session = 1;
        lk->ttl_ms = 15000;
        lk->lease_ms = consul_now_ms();
    }
    memset(&m, 0, sizeof m);
    consul_mach_init(&m, cf);
    if (which == 0 || which == 2) {
        if (lk->kind == CONSUL_KIND_SEMAPHORE)
            consul_sem_acquire_init(&m, lk, (data[0] & 8) ? 0 : 60000);
        else
            consul_lock_acquire_init(&m, lk, (data[0] & 8) ? 0 : 60000);
    } else {
        consul_lock_release_init(&m, lk);
    }
    m.abandon = NULL;  /* no renewer thread here */
    act = m.step(&m, NULL);
    while (act != CONSUL_DONE && steps++ < MAX_STEPS) {
        if (act == CONSUL_SLEEP) {
            act = m.step(&m, NULL);
            continue;
        }
        if (off + 3 > size)
            break;  /* out of answers */
        consul_resp_reset(&rs);
        rs.status = statuses[data[off] & 7];
        rs.code = rs.status == 0 ? (data[off] & 8 ? CONSUL_ECONNECT : CONSUL_ETIMEOUT)
                : rs.status < 300 ? CONSUL_OK : CONSUL_EHTTP;
        rs.has_index = data[off + 1] != 0;
        rs.index = data[off + 1];
        {
            size_t n = data[off + 2];
            off += 3;
            if (n > size - off)
                n = size - off;
            consul_buf_reset(&m.out);
            consul_buf_add(&m.out, data + off, n);
            consul_buf_reserve(&m.out, 0);
            rs.body = m.out.data;
            rs.body_len = n;
            rs.json = 1;
            off += n;
        }
        act = m.step(&m, &rs);
    }
    if (lk->session[0] != '\0' && !consul_valid_id(lk->session, strlen(lk->session)))
        abort();  /* a session ID kept is one that can go into a URL and a JSON string */
    consul_mach_release(&m);
    consul_lock_unref(lk);
    return 0;
}
