/* fuzz-address.c — paths, domains and numbers (src/smtp-parse.c).
 *
 * Input: one flag byte, then the text after "MAIL FROM:" or "RCPT TO:" (the
 * path and its ESMTP parameters), as the session hands it to the parser.
 *   flag bit 0: GM_PATH_SENDER (the null path <> allowed)
 *   flag bit 1: GM_PATH_RECIPIENT (<postmaster> allowed)
 * The same text also goes to gm_valid_domain and gm_parse_decimal.
 *
 * Checks: an accepted path respects RFC 5321's lengths (local part 64,
 * domain 255, path 256 with the brackets), is valid UTF-8 and has utf8 set
 * exactly when it is not ASCII; its canonical form parses again to the same
 * canonical form (rules hand canonical addresses back to the parser:
 * set-sender!, add-recipient!); parameters point into the line, keywords
 * start with a letter or digit and values are not empty; a valid domain has
 * labels of at most 63 octets and at most 255 in all; gm_parse_decimal agrees
 * with g_ascii_string_to_unsigned. */
#include "config.h"

#include "fuzz.h"
#include "smtp-parse.h"

static gboolean
is_ascii (const char *s)
{
  for (; *s; s++)
    if ((guchar) *s >= 0x80)
      return FALSE;
  return TRUE;
}

static void
check_params (const char *line, gsize len, const GmParam *params, guint n_params)
{
  FUZZ_CHECK (n_params <= GM_MAX_PARAMS, "%u parameters", n_params);
  for (guint i = 0; i < n_params; i++)
    {
      const GmParam *p = &params[i];
      FUZZ_CHECK (p->keyword >= line && p->keyword < line + len, "keyword outside the line");
      FUZZ_CHECK (g_ascii_isalnum (p->keyword[0]), "keyword \"%s\"", p->keyword);
      for (const char *k = p->keyword; *k; k++)
        FUZZ_CHECK (g_ascii_isalnum (*k) || *k == '-', "keyword \"%s\"", p->keyword);
      if (p->value)
        {
          FUZZ_CHECK (p->value > line && p->value < line + len, "value outside the line");
          FUZZ_CHECK (p->value[0] != '\0', "empty value of %s", p->keyword);
          FUZZ_CHECK (strchr (p->value, ' ') == NULL && strchr (p->value, '=') == NULL,
                      "value \"%s\"", p->value);
        }
    }
}

static void
check_path (GmPathFlags flags, const GmPath *path)
{
  FUZZ_CHECK (path->local != NULL, "no local part");
  g_autofree char *canonical = gm_path_to_string (path);
  FUZZ_CHECK (g_utf8_validate (canonical, -1, NULL), "not UTF-8: %s", canonical);
  FUZZ_CHECK (path->utf8 == !is_ascii (canonical), "utf8 flag wrong for %s", canonical);
  FUZZ_CHECK (strlen (path->local) <= 64, "local part of %zu octets", strlen (path->local));
  FUZZ_CHECK (strlen (canonical) + 2 <= 256, "path of %zu octets", strlen (canonical) + 2);
  if (path->domain)
    {
      const char *reason;
      FUZZ_CHECK (strlen (path->domain) <= 255, "domain of %zu octets", strlen (path->domain));
      FUZZ_CHECK (gm_valid_domain (path->domain, strlen (path->domain), &reason),
                  "accepted domain %s is not valid: %s", path->domain, reason);
    }
  else
    FUZZ_CHECK (path->local[0] == '\0' || g_ascii_strcasecmp (path->local, "postmaster") == 0,
                "no domain for %s", path->local);

  /* Parsing the canonical form again gives it back. */
  g_autofree char *again = g_strdup_printf ("<%s>", canonical);
  GmPath path2;
  GmParam params[GM_MAX_PARAMS];
  guint n_params;
  const char *reason = NULL;
  FUZZ_CHECK (gm_parse_path_and_params (again, flags, &path2, params, &n_params, &reason, NULL),
              "canonical form %s refused: %s", again, reason);
  g_autofree char *canonical2 = gm_path_to_string (&path2);
  FUZZ_CHECK (strcmp (canonical, canonical2) == 0, "canonical form changes: %s -> %s",
              canonical, canonical2);
  FUZZ_CHECK (path->utf8 == path2.utf8, "utf8 flag changes for %s", canonical);
  FUZZ_CHECK (n_params == 0, "parameters in %s", again);
  gm_path_clear (&path2);
}

static void
check_domain (const char *s, gsize len)
{
  const char *reason = NULL;
  if (!gm_valid_domain (s, len, &reason))
    {
      FUZZ_CHECK (reason != NULL, "refused without a reason");
      return;
    }
  FUZZ_CHECK (len > 0 && len <= 255, "valid domain of %zu octets", len);
  FUZZ_CHECK (g_utf8_validate (s, len, NULL), "valid domain not UTF-8");
  FUZZ_CHECK (memchr (s, '\0', len) == NULL, "NUL in a valid domain");
  if (s[0] == '[')
    return;
  gsize label = 0;
  for (gsize i = 0; i < len; i++)
    {
      label = s[i] == '.' ? 0 : label + 1;
      FUZZ_CHECK (label <= 63, "label longer than 63 octets");
      FUZZ_CHECK (s[i] != ' ' && s[i] != '>' && s[i] != '@', "valid domain with '%c'", s[i]);
    }
}

static void
check_decimal (const char *s)
{
  guint64 value = 0, expected = 0;
  gboolean ok = gm_parse_decimal (s, &value);
  /* g_ascii_string_to_unsigned also takes a sign and leading zeros beyond 20
   * digits; the SMTP numbers are 1 to 20 plain digits. */
  gboolean plain = s[0] != '\0' && strspn (s, "0123456789") == strlen (s) && strlen (s) <= 20;
  gboolean ok2 = plain && g_ascii_string_to_unsigned (s, 10, 0, G_MAXUINT64, &expected, NULL);
  FUZZ_CHECK (ok == ok2, "gm_parse_decimal (\"%s\") = %d", s, ok);
  if (ok)
    FUZZ_CHECK (value == expected, "gm_parse_decimal (\"%s\") = %" G_GUINT64_FORMAT, s, value);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  GmPathFlags flags = data[0] & (GM_PATH_SENDER | GM_PATH_RECIPIENT);
  /* The session hands the parser a NUL-terminated line without CR, LF or
   * NUL: cut at the first NUL as it would never get past one. */
  gsize len = strnlen ((const char *) data + 1, size - 1);
  char *line = g_strndup ((const char *) data + 1, len);
  char *copy = g_strdup (line);

  GmPath path;
  GmParam params[GM_MAX_PARAMS];
  guint n_params = 0;
  const char *reason = NULL;
  gboolean params_failed = TRUE;
  if (gm_parse_path_and_params (line, flags, &path, params, &n_params, &reason, &params_failed))
    {
      FUZZ_CHECK (!params_failed, "params_failed set on success");
      check_params (line, len, params, n_params);
      check_path (flags, &path);
      gm_path_clear (&path);
    }
  else
    {
      FUZZ_CHECK (reason != NULL, "refused without a reason");
      FUZZ_CHECK (path.local == NULL && path.domain == NULL, "refused path keeps its parts");
    }

  check_domain (copy, len);
  check_decimal (copy);
  g_free (copy);
  g_free (line);
  return 0;
}
