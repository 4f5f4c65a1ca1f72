# Thin wrapper over CMake. `make` builds; `make demo`, `make check`, `make bench` as in the README.
BUILD ?= build
BUILD_ASAN ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: install soak all deps configure demo check test test-asan test-validation bench clean format

all: configure
	cmake --build $(BUILD) -j$(JOBS)

deps:
	@bash scripts/deps.sh

configure:
	@test -f $(BUILD)/CMakeCache.txt || cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

demo: deps all
	@bash scripts/demo.sh $(BUILD)

# The whole suite: normal build, then with the Khronos validation layer, then under ASan + UBSan. The check build
# treats warnings as errors (check.sh configures it so; a fresh build folder starts that way).
check: deps
	@$(MAKE) --no-print-directory all CMAKE_FLAGS="$(CMAKE_FLAGS) -DLATHE_WERROR=ON"
	@bash scripts/check.sh $(BUILD) $(BUILD_ASAN) $(JOBS)

test:
	@$(MAKE) --no-print-directory all CMAKE_FLAGS="$(CMAKE_FLAGS) -DLATHE_WERROR=ON"
	@bash scripts/check.sh --plain-only $(BUILD) $(BUILD_ASAN) $(JOBS)

# The chaos test at length: random kill -9s of daemon and worker for LATHE_CHAOS_ROUNDS rounds (default 200, a few
# minutes); LATHE_CHAOS_SEED repeats a run.
soak: deps all
	@LATHE_CHAOS_ROUNDS=$${LATHE_CHAOS_ROUNDS:-200} LATHE_TEST_CACHE_DIR=$(CURDIR)/$(BUILD)/test-cache \
		$(BUILD)/bin/test_daemon --filter 'chaos/*' --verbose

bench: deps all
	@bash scripts/bench.sh $(BUILD)

# Installs lathe, lathed and lathe-worker into PREFIX/bin (default ~/.local), the docs into PREFIX/share/doc/lathe
# and the systemd user unit into PREFIX/lib/systemd/user; DESTDIR stages the tree elsewhere.
PREFIX ?= $(HOME)/.local
install: all
	@DESTDIR=$(DESTDIR) cmake --install $(BUILD) --prefix $(PREFIX)

# Applies .clang-format to every C source and header.
format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
