/* verdict.c — policy verdicts and their validation (RFC 5321 §4.2, RFC 3463). */
#include "config.h"
#include "verdict.h"

#include <string.h>
#include <gio/gio.h>

static const char *const stage_names[GM_N_STAGES] = {
  "connect", "helo", "auth", "mail", "rcpt", "data", "queued", "delivery",
};

const char *
gm_stage_name (GmStage stage)
{
  g_return_val_if_fail (stage < GM_N_STAGES, "?");
  return stage_names[stage];
}

void
gm_verdict_clear (GmVerdict *v)
{
  g_clear_pointer (&v->text, g_free);
  v->kind = GM_VERDICT_NEXT;
  v->code = 0;
  v->esc[0] = '\0';
}

/* "X.Y.Z" with X the class digit, Y up to 3 digits, Z up to 3 digits. */
static gsize
enhanced_code_length (const char *t)
{
  const char *p = t;
  if (*p != '2' && *p != '4' && *p != '5')
    return 0;
  p++;
  for (int part = 0; part < 2; part++)
    {
      if (*p++ != '.')
        return 0;
      int digits = 0;
      while (g_ascii_isdigit (*p) && digits < 4)
        p++, digits++;
      if (digits == 0 || digits > 3)
        return 0;
    }
  return (*p == ' ' || *p == '\0') ? (gsize) (p - t) : 0;
}

gboolean
gm_verdict_set_reply (GmVerdict *v, GmVerdictKind kind, guint code, const char *text,
                      GError **error)
{
  guint class = kind == GM_VERDICT_REJECT ? 5 : 4;
  const char *what = kind == GM_VERDICT_REJECT ? "reject" : "defer";
  if (code / 100 != class || code > class * 100 + 99)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "%s needs a %ux code, got %u", what, class, code);
      return FALSE;
    }
  if (strchr (text, '\r') || strchr (text, '\n'))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "%s: the reply text must not contain CR or LF", what);
      return FALSE;
    }
  if (strlen (text) > 500)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "%s: the reply text is longer than 500 bytes", what);
      return FALSE;
    }
  gsize esc_len = enhanced_code_length (text);
  if (esc_len && (guint) (text[0] - '0') != class)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "%s %u: the enhanced status code %.*s must start with %u", what, code,
                   (int) esc_len, text, class);
      return FALSE;
    }
  gm_verdict_clear (v);
  v->kind = kind;
  v->code = code;
  if (esc_len)
    {
      memcpy (v->esc, text, esc_len);
      v->esc[esc_len] = '\0';
      text += esc_len;
      while (*text == ' ')
        text++;
    }
  else
    g_strlcpy (v->esc, class == 5 ? "5.7.1" : "4.7.1", sizeof v->esc);
  v->text = g_strdup (*text ? text : (class == 5 ? "Rejected by policy" : "Try again later"));
  return TRUE;
}

void
gm_verdict_set_policy_failure (GmVerdict *v)
{
  gm_verdict_clear (v);
  v->kind = GM_VERDICT_DEFER;
  v->code = 451;
  g_strlcpy (v->esc, "4.3.0", sizeof v->esc);
  v->text = g_strdup ("Temporary policy failure");
}

gboolean
gm_valid_quarantine_name (const char *name)
{
  gsize len = strlen (name);
  if (len == 0 || len > 64 || name[0] == '.')
    return FALSE;
  for (const char *p = name; *p; p++)
    if (!g_ascii_isalnum (*p) && *p != '.' && *p != '_' && *p != '-')
      return FALSE;
  return TRUE;
}
