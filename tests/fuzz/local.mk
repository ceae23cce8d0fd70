## Fuzzing (tests/fuzz/README.md), included from Makefile.am.
##
## `make check` replays every corpus tests/fuzz/corpus/TARGET/ through
## tests/fuzz/replay-TARGET: the target built with standalone.c instead of
## libFuzzer, with the project's compiler and flags (so with ASan and UBSan
## under ./configure --enable-sanitizers).
##
## `make fuzz` builds each target with clang, libFuzzer, ASan and UBSan in
## tests/fuzz/build/ (its own build of the library sources it needs) and runs
## it for FUZZ_TIME seconds on its corpus; new inputs go to
## tests/fuzz/build/corpus/TARGET/, crashes to tests/fuzz/build/TARGET-crash-*.
## `make fuzz-merge` adds the new inputs that reach new code to the corpora
## (new edges only, not new hit counts: the corpora stay small).

fuzz_targets = address command session queue-file headers

check_PROGRAMS += tests/fuzz/replay-address tests/fuzz/replay-command \
	tests/fuzz/replay-session tests/fuzz/replay-queue-file tests/fuzz/replay-headers
tests_fuzz_replay_address_SOURCES = tests/fuzz/fuzz-address.c tests/fuzz/standalone.c tests/fuzz/fuzz.h
tests_fuzz_replay_command_SOURCES = tests/fuzz/fuzz-command.c tests/fuzz/standalone.c tests/fuzz/fuzz.h
tests_fuzz_replay_session_SOURCES = tests/fuzz/fuzz-session.c tests/fuzz/standalone.c tests/fuzz/fuzz.h
tests_fuzz_replay_queue_file_SOURCES = tests/fuzz/fuzz-queue-file.c tests/fuzz/standalone.c \
	tests/fuzz/fuzz.h
## fuzz-headers.c includes src/policy.c to reach its static header primitives.
tests_fuzz_replay_headers_SOURCES = tests/fuzz/fuzz-headers.c tests/fuzz/standalone.c tests/fuzz/fuzz.h

EXTRA_DIST += tests/fuzz/local.mk tests/fuzz/README.md tests/fuzz/run-replay tests/fuzz/smtp.dict \
	tests/fuzz/make-seeds tests/fuzz/lsan.supp \
	$(wildcard $(srcdir)/tests/fuzz/corpus/*/*)

## make fuzz [FUZZ_TIME=seconds] [FUZZ_TARGETS="session ..."] [FUZZ_FLAGS="-jobs=2 ..."]
FUZZ_TIME = 60
FUZZ_TARGETS = $(fuzz_targets)
FUZZ_FLAGS =
FUZZ_CC = clang
fuzz_dir = tests/fuzz/build
fuzz_sanitize = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer -g -O1
## The library sources the targets use (a subset of libguillemot_a_SOURCES).
fuzz_lib_sources = src/log.c src/settings.c src/smtp-parse.c src/smtp-reply.c src/verdict.c \
	src/smtp-session.c src/dirsync.c src/spool.c
fuzz_lib_objects = $(fuzz_lib_sources:src/%.c=$(fuzz_dir)/%.o)
fuzz_compile = $(FUZZ_CC) $(DEFS) $(DEFAULT_INCLUDES) $(AM_CPPFLAGS) $(CPPFLAGS) $(GUILE_CFLAGS) \
	$(GLIB_CFLAGS) -fsanitize=fuzzer-no-link $(fuzz_sanitize)
## Guile only where it is used (fuzz-headers: src/policy.c).
fuzz_libs = $(GLIB_LIBS)
$(fuzz_dir)/fuzz-headers: fuzz_libs = $(GUILE_LIBS) $(GLIB_LIBS)

$(fuzz_dir)/%.o: $(srcdir)/src/%.c $(wildcard $(srcdir)/src/*.h) config.h
	@$(MKDIR_P) $(fuzz_dir)
	$(AM_V_CC)$(fuzz_compile) -c -o $@ $<
$(fuzz_dir)/fuzz-%.o: $(srcdir)/tests/fuzz/fuzz-%.c $(srcdir)/tests/fuzz/fuzz.h \
  $(wildcard $(srcdir)/src/*.h) $(srcdir)/src/policy.c config.h
	@$(MKDIR_P) $(fuzz_dir)
	$(AM_V_CC)$(fuzz_compile) -c -o $@ $<
$(fuzz_dir)/fuzz-%: $(fuzz_dir)/fuzz-%.o $(fuzz_lib_objects)
	$(AM_V_CCLD)$(FUZZ_CC) -fsanitize=fuzzer $(fuzz_sanitize) -o $@ $^ $(fuzz_libs)
# Keep the objects: they are made by pattern rules, and make would delete them.
.SECONDARY: $(fuzz_lib_objects) $(fuzz_targets:%=$(fuzz_dir)/fuzz-%.o)

## Per target: the SMTP dictionary, and room for DATA lines longer than the
## 8192 bytes after which the session consumes a partial line.
fuzz_options = case $$t in \
	  session) echo "-dict=$(srcdir)/tests/fuzz/smtp.dict -max_len=20000";; \
	  command) echo "-dict=$(srcdir)/tests/fuzz/smtp.dict -max_len=4096";; \
	  headers) echo "-max_len=8192";; \
	  *) echo "-max_len=4096";; \
	esac

## Guile's and its collector's own allocations are not leaks of ours.
fuzz_env = LSAN_OPTIONS=suppressions=$(abs_srcdir)/tests/fuzz/lsan.supp:print_suppressions=0

fuzz: $(FUZZ_TARGETS:%=$(fuzz_dir)/fuzz-%)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  $(MKDIR_P) $(fuzz_dir)/corpus/$$t; \
	  echo "fuzz: $$t for $(FUZZ_TIME) seconds"; \
	  $(fuzz_env) $(fuzz_dir)/fuzz-$$t -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
	    -artifact_prefix=$(fuzz_dir)/$$t- `$(fuzz_options)` $(FUZZ_FLAGS) \
	    $(fuzz_dir)/corpus/$$t $(srcdir)/tests/fuzz/corpus/$$t; \
	done

fuzz-merge: $(FUZZ_TARGETS:%=$(fuzz_dir)/fuzz-%)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  $(MKDIR_P) $(fuzz_dir)/corpus/$$t; \
	  $(fuzz_env) $(fuzz_dir)/fuzz-$$t -merge=1 -use_counters=0 `$(fuzz_options)` \
	    $(srcdir)/tests/fuzz/corpus/$$t $(fuzz_dir)/corpus/$$t; \
	done

clean-local: clean-fuzz
clean-fuzz:
	rm -rf $(fuzz_dir)

.PHONY: fuzz fuzz-merge clean-fuzz
