## tests/torture/local.mk — crash durability torture and disk-full fault
## injection (included from Makefile.am).

## make check-torture: 200 SIGKILLs under load, then every mailbox checked.
## TORTURE_FLAGS="--kills 50 --seed 1234" changes the run.
TORTURE_FLAGS =
check-torture: all tests/torture/faults.so
	$(UNINSTALLED_ENV) GUILLEMOT="$(abs_top_builddir)/guillemot" \
	  top_srcdir="$(abs_top_srcdir)" top_builddir="$(abs_top_builddir)" \
	  $(PYTHON3) $(srcdir)/tests/torture/torture.py $(TORTURE_FLAGS)

## The LD_PRELOAD fault library of the torture and of
## tests/integration/test_disk_full.py: a shared object built as a check
## program (no libtool here).
check_PROGRAMS += tests/torture/faults.so
tests_torture_faults_so_SOURCES = tests/torture/faults.c
tests_torture_faults_so_CFLAGS = -fPIC -Wall -Wextra
tests_torture_faults_so_LDFLAGS = -shared
tests_torture_faults_so_LDADD = -ldl -lpthread

## doc/guarantees-durability.texi is @included by the manual's guarantees chapter.
EXTRA_DIST += tests/torture/local.mk tests/torture/torture.py tests/torture/faultlib.py \
	doc/guarantees-durability.texi

.PHONY: check-torture
