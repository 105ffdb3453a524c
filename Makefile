# consul: a Lua module with a C core for the Consul HTTP API.
#   make            build for Lua 5.4 and LuaJIT (installs missing Debian packages when root)
#   make test       the spec suite on Lua 5.4 and LuaJIT against a throwaway Consul 1.8.7 agent
#   make demo       the example against a throwaway agent
#   make nginx-demo examples/nginx: two nginx nodes, a KV handler, a critical section, a leader job
#   make bench      throughput against a raw libcurl loop, and in nginx against raw cosockets
#   make valgrind   the suite under valgrind;  make asan: the suite with ASan/UBSan
#   make fuzz       each libFuzzer target (fuzz/) for FUZZ_SECONDS (60) under ASan/UBSan
#   make chaos      locks on a real 3-server cluster with faults injected (chaos/; minutes)
#   make install    luarocks make (the rockspec)

SHELL    := /bin/bash

DEB_PKGS  = gcc make pkg-config lua5.4 liblua5.4-dev lua-busted libcurl4-openssl-dev \
            libcjson-dev luarocks luajit2 libluajit2-5.1-dev valgrind curl openssl ca-certificates \
            clang libclang-rt-14-dev nginx libnginx-mod-http-lua wrk
CC       ?= gcc
WARN      = -std=c99 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wwrite-strings -Werror -Werror=implicit-function-declaration
OPT      ?= -O2 -g
LIBS_CFLAGS = $$(pkg-config --cflags libcurl libcjson)
LIBS_LDFLAGS = $$(pkg-config --libs libcurl libcjson) -lpthread -ldl
SRC       = $(wildcard csrc/*.c)
HDR       = $(wildcard csrc/*.h)
BUSTED    = busted --output=utfTerminal --helper=spec/helpers/progress.lua
BUSTED_LUA = /usr/bin/busted --output=utfTerminal --helper=spec/helpers/progress.lua

LUA54_INC  = -I/usr/include/lua5.4
LUAJIT_INC = -I/usr/include/luajit-2.1

.PHONY: all deps consul test test-54 test-jit demo nginx-demo bench bench-nginx chaos valgrind asan fuzz fuzz-build install clean readme check-readme

all: deps build/5.4/consul/core.so build/jit/consul/core.so

# Installs what is missing, as root; otherwise says what is missing.
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	  else echo "missing Debian packages:$$missing (run make as root to install them)"; exit 1; fi; \
	fi

build/5.4/consul/core.so: $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(WARN) $(OPT) -fPIC -shared $(LUA54_INC) $(LIBS_CFLAGS) -o $@ $(SRC) $(LIBS_LDFLAGS)

build/jit/consul/core.so: $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(WARN) $(OPT) -fPIC -shared $(LUAJIT_INC) $(LIBS_CFLAGS) -o $@ $(SRC) $(LIBS_LDFLAGS)

# Consul 1.8.7 from Debian bullseye into .cache/ (apt, sha256 checked); a no-op once it is there.
consul:
	@scripts/fetch-consul.sh >/dev/null

# Specs and the demo load the module from the build tree.
PATHS54  = LUA_PATH="./lua/?.lua;./?.lua;./?/init.lua;;" LUA_CPATH="./build/5.4/?.so;;"
PATHSJIT = LUA_PATH="./lua/?.lua;./?.lua;./?/init.lua;;" LUA_CPATH="./build/jit/?.so;;"

test: all consul check-readme
	@rm -f build/results-*.txt build/crash-*.txt
	scripts/run-suite.sh 5.4 env $(PATHS54) $(BUSTED) --lua=lua5.4 spec; s1=$$?; \
	scripts/run-suite.sh jit env $(PATHSJIT) $(BUSTED) --lua=luajit spec; s2=$$?; \
	scripts/summary.sh build/results-5.4.txt build/results-jit.txt; \
	test $$s1 = 0 && test $$s2 = 0

# The README's endpoint table is generated from consul.routes(): write it, or check it.
readme: build/5.4/consul/core.so
	scripts/readme-routes.sh write

check-readme: build/5.4/consul/core.so
	scripts/readme-routes.sh check

test-54: all consul
	scripts/with-agent.sh env $(PATHS54) $(BUSTED) --lua=lua5.4 spec

test-jit: all consul
	scripts/with-agent.sh env $(PATHSJIT) $(BUSTED) --lua=luajit spec

demo: all consul
	scripts/with-agent.sh env $(PATHS54) lua5.4 examples/demo.lua

nginx-demo: all consul
	scripts/with-agent.sh examples/nginx/demo.sh

bench: all consul
	@mkdir -p build/bench
	$(CC) -std=c99 -O2 -Wall -Wextra -o build/rawbench bench/rawbench.c $(LIBS_CFLAGS) $(LIBS_LDFLAGS)
	$(CC) -std=c99 -O2 -Wall -Wextra -fPIC -shared $(LUA54_INC) -o build/bench/benchutil.so bench/benchutil.c
	scripts/with-agent.sh env $(PATHS54) sh -c \
	  'lua5.4 bench/bench.lua build/rawbench && echo && lua5.4 bench/nginx.lua'

# Only the nginx part of the benchmark.
bench-nginx: all consul
	@mkdir -p build/bench
	$(CC) -std=c99 -O2 -Wall -Wextra -fPIC -shared $(LUA54_INC) -o build/bench/benchutil.so bench/benchutil.c
	scripts/with-agent.sh env $(PATHS54) lua5.4 bench/nginx.lua

# The chaos test (chaos/run.lua): a real 3-server, 2-client cluster on 127.0.77.x, workers
# contending for a lock, faults injected, histories checked. CHAOS_ROUNDS (lock,guarded,sem),
# CHAOS_FAULTS (leader,freeze,kill,restart), CHAOS_CYCLES (1). An interrupted run's processes
# are stopped by their PID files.
chaos: all consul
	@trap 'env $(PATHS54) lua5.4 chaos/run.lua --cleanup' INT TERM; \
	  env $(PATHS54) lua5.4 chaos/run.lua

# The whole suite under valgrind: no leaks, no errors. lua5.4 runs busted directly (busted's
# --lua would re-exec it outside valgrind); the processes specs spawn are not traced.
valgrind: all consul
	@mkdir -p build
	scripts/run-suite.sh valgrind env $(PATHS54) CONSUL_TEST_VALGRIND=1 valgrind --quiet --error-exitcode=99 \
	  --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
	  --suppressions=scripts/valgrind.supp --trace-children=no \
	  lua5.4 $(BUSTED_LUA) spec

# The suite with ASan and UBSan: the module and a small Lua front end built instrumented.
asan: deps consul
	@mkdir -p build/asan/consul
	$(CC) $(WARN) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	  -fno-sanitize-recover=undefined -fPIC -shared $(LUA54_INC) $(LIBS_CFLAGS) \
	  -o build/asan/consul/core.so $(SRC) $(LIBS_LDFLAGS)
	$(CC) -std=c99 -O1 -g -fsanitize=address,undefined $(LUA54_INC) -o build/asan/lua \
	  scripts/asan-lua.c -llua5.4
	scripts/run-suite.sh asan env LUA_PATH="./lua/?.lua;./?.lua;;" LUA_CPATH="./build/asan/?.so;;" \
	  CONSUL_TEST_ASAN=1 ASAN_OPTIONS=detect_leaks=1:exitcode=98 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  build/asan/lua $(BUSTED_LUA) spec

# libFuzzer targets (fuzz/*.c) over the C core, with ASan/UBSan: each runs FUZZ_SECONDS from
# the seed corpus of real Consul answers (fuzz/corpus/NAME) and its own working corpus
# (build/fuzz/NAME); any finding (a crash, a leak, undefined behaviour) fails the target.
FUZZ_TARGETS = json wire answer stream machine
FUZZ_SECONDS ?= 60
FUZZ_CC = clang
FUZZ_FLAGS = -std=c99 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
             -fno-sanitize-recover=undefined -Wall -Wextra -Werror $(LUA54_INC) $(LIBS_CFLAGS)

fuzz-build: deps
	@mkdir -p build/fuzz
	@for t in $(FUZZ_TARGETS); do \
	  $(FUZZ_CC) $(FUZZ_FLAGS) -o build/fuzz/fuzz_$$t fuzz/fuzz_$$t.c $(SRC) -llua5.4 $(LIBS_LDFLAGS) || exit 1; \
	done

fuzz: fuzz-build
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/$$t; echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  if (cd build/fuzz && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	      ./fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	      -artifact_prefix=$$t- $$t ../../fuzz/corpus/$$t >$$t.log 2>&1); then \
	    echo "fuzz: $$t: no finding ($$(grep -o 'stat::number_of_executed_units: [0-9]*' build/fuzz/$$t.log | grep -o '[0-9]*$$') runs)"; \
	  else \
	    echo "fuzz: $$t: FINDING"; tail -n 60 build/fuzz/$$t.log; fail=1; \
	  fi; \
	done; exit $$fail

install: deps
	luarocks --lua-version=5.4 make rockspec/consul-scm-1.rockspec

clean:
	rm -rf build
