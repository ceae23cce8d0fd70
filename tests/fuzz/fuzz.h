/* fuzz.h — what the fuzz targets share: the libFuzzer entry points, a check
 * that aborts (so that libFuzzer and the standalone replay both report it),
 * a small deterministic random generator for choices taken from the input,
 * the settings every target starts from, and the reply-syntax check.
 *
 * Header-only on purpose: each target is one .c file plus this, built both
 * with clang and libFuzzer (make fuzz) and with the project's compiler and
 * standalone.c (make check). */
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <glib.h>

#include "log.h"
#include "settings.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);
int LLVMFuzzerInitialize (int *argc, char ***argv);

/* A property that must hold: report it and abort, like a sanitizer would. */
#define FUZZ_CHECK(cond, ...) \
  do { if (G_UNLIKELY (!(cond))) { \
         fprintf (stderr, "%s:%d: fuzz check failed: %s: ", __FILE__, __LINE__, #cond); \
         fprintf (stderr, __VA_ARGS__); \
         fputc ('\n', stderr); \
         abort (); } } while (0)

/* xorshift32: the same seed gives the same choices on every run. */
typedef struct
{
  guint32 state;
} FuzzRng;

static inline void
fuzz_rng_init (FuzzRng *rng, guint32 seed)
{
  rng->state = seed * 2654435761u + 0x9e3779b9u;
  if (!rng->state)
    rng->state = 1;
}

static inline guint32
fuzz_rng_next (FuzzRng *rng)
{
  guint32 x = rng->state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return rng->state = x;
}

static inline void
fuzz_log_discard (const char *line)
{
  (void) line;
}

/* The settings the golden conversations use (tests/smtp/session-replay.c).
 * SMALL_LIMITS: the smallest limits the tests use, so that short inputs
 * reach them. */
static inline void
fuzz_config_setup (gboolean bare_reject, gboolean small_limits)
{
  gm_config_reset ();
  g_free (gm_config.hostname);
  gm_config.hostname = g_strdup ("mx.example.test");
  g_free (gm_config.state_dir);
  gm_config.state_dir = g_strdup ("/spool");
  g_strfreev (gm_config.local_domains);
  gm_config.local_domains = g_new0 (char *, 3);
  gm_config.local_domains[0] = g_strdup ("example.test");
  gm_config.local_domains[1] = g_strdup ("[127.0.0.1]");
  gm_config.bare_line_endings = bare_reject ? GM_BARE_REJECT : GM_BARE_NORMALISE;
  if (small_limits)
    {
      gm_config.max_message_size = 1024;
      gm_config.max_recipients = 2;
      gm_config.max_errors = 3;
      gm_config.max_command_length = 512;
    }
}

/* RFC 5321 §4.2 and §4.5.3.1.5: each reply line is three digits, a space or
 * a hyphen (not on the last line), text without CR or LF, CRLF, at most 512
 * octets in all. OUT holds whole replies. */
static inline void
fuzz_check_replies (const GString *out)
{
  const char *p = out->str, *end = out->str + out->len;
  gboolean continued = FALSE;
  while (p < end)
    {
      const char *lf = memchr (p, '\n', end - p);
      FUZZ_CHECK (lf != NULL, "reply without line end: %.*s", (int) (end - p), p);
      gsize len = lf - p + 1;
      FUZZ_CHECK (len >= 6 && p[len - 2] == '\r', "reply line not ending in CRLF: %.*s",
                  (int) len, p);
      FUZZ_CHECK (memchr (p, '\r', len - 2) == NULL, "CR inside a reply line: %.*s", (int) len, p);
      FUZZ_CHECK (g_ascii_isdigit (p[0]) && g_ascii_isdigit (p[1]) && g_ascii_isdigit (p[2])
                  && (p[3] == ' ' || p[3] == '-'), "malformed reply line: %.*s", (int) len, p);
      FUZZ_CHECK (p[0] >= '2' && p[0] <= '5', "reply code out of range: %.*s", (int) len, p);
      FUZZ_CHECK (len <= 512, "reply line of %zu octets (RFC 5321 4.5.3.1.5: 512): %.60s...",
                  len, p);
      FUZZ_CHECK (memchr (p, '\0', len) == NULL, "NUL in a reply line");
      FUZZ_CHECK (g_utf8_validate (p, len, NULL), "reply line not UTF-8: %.*s", (int) len, p);
      continued = p[3] == '-';
      p += len;
    }
  FUZZ_CHECK (!continued, "multi-line reply without its last line");
}
