/*
 * fuzz_answer.c: an answer's body shaped into a call's result, for every answer kind the
 * calls use (JSON auto, ID, first element, bool, text, a KV record, records, keys, pairs).
 * The first byte picks the kind and the route's flags, the second the status and whether the
 * answer says it is JSON; the rest is the body.
 */
#include "fuzz.h"

static const int kinds[] = {
    CONSUL_ANS_AUTO, CONSUL_ANS_ID, CONSUL_ANS_FIRST, CONSUL_ANS_TEXT, CONSUL_ANS_BOOL,
    CONSUL_ANS_RAW, CONSUL_ANS_RECORD, CONSUL_ANS_RECORDS, CONSUL_ANS_KEYS, CONSUL_ANS_PAIRS
};
static const long statuses[] = { 200, 200, 200, 404, 429, 503, 409, 500 };

static lua_State *L;
static consul_client client;

static int shape(lua_State *S)
{
    const uint8_t *data = lua_touserdata(S, 1);
    size_t size = (size_t)lua_tointeger(S, 2), n;
    consul_op *op = consul_op_new(S, &client);
    consul_resp *rs = &op->m.last;
    op->box = lua_gettop(S);
    op->answer = kinds[data[0] % (sizeof kinds / sizeof kinds[0])];
    op->json_flags = (data[0] >> 4) & (CONSUL_JSON_B64VALUE | CONSUL_JSON_B64PAYLOAD);
    op->flags = (data[0] & 0x80) ? CONSUL_CALL_STATUS_DATA : 0;
    op->m.rq.method = (data[1] & 0x80) ? "PUT" : "GET";
    op->m.rq.path = "/v1/fuzz";
    consul_resp_reset(rs);
    rs->status = statuses[data[1] & 7];
    rs->code = rs->status < 300 ? CONSUL_OK : CONSUL_EHTTP;
    rs->json = (data[1] & 8) != 0;
    rs->has_index = (data[1] & 16) != 0;
    rs->index = 42;
    n = size - 2;
    consul_buf_reset(&op->m.out);
    consul_buf_add(&op->m.out, data + 2, n);
    consul_buf_reserve(&op->m.out, 0);
    rs->body = op->m.out.data;
    rs->body_len = n;
    op->m.rc = rs->code;
    op->m.done = 1;
    return consul_op_results(S, op);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (L == NULL) {
        L = fuzz_state();
        client.conf = fuzz_conf();
    }
    lua_pushcfunction(L, shape);
    lua_pushlightuserdata(L, (void *)data);
    lua_pushinteger(L, (lua_Integer)size);
    lua_pcall(L, 2, LUA_MULTRET, 0);  /* pairs raises on a failed listing */
    lua_settop(L, 0);
    if ((data[0] & 0x40) != 0)
        lua_gc(L, LUA_GCCOLLECT, 0);  /* the ops' boxes go */
    return 0;
}
