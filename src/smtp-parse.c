/* smtp-parse.c — paths, domains and ESMTP parameters (RFC 5321 §4.1.2,
 * §4.5.3.1; RFC 6531 §3.3 for UTF-8).
 *
 * Path lengths: local part 64, domain 255, whole path 256 octets. Source
 * routes (@a,@b:) are accepted and ignored (RFC 5321 §4.1.2, Appendix C). */
#include "config.h"
#include "smtp-parse.h"

#include <arpa/inet.h>
#include <string.h>

#define MAX_LOCAL 64
#define MAX_PATH 256

void
gm_path_clear (GmPath *path)
{
  g_clear_pointer (&path->local, g_free);
  g_clear_pointer (&path->domain, g_free);
  path->utf8 = FALSE;
}

void
gm_path_append (GString *out, const GmPath *path)
{
  if (path->local)
    g_string_append (out, path->local);
  if (path->domain)
    {
      g_string_append_c (out, '@');
      g_string_append (out, path->domain);
    }
}

char *
gm_path_to_string (const GmPath *path)
{
  GString *s = g_string_new (NULL);
  gm_path_append (s, path);
  return g_string_free (s, FALSE);
}

/* RFC 5322 atext, plus UTF-8 bytes (validated as a whole later). Not NUL:
 * strchr finds the terminator of its set, and the local-part scan would run
 * past the end of the line (found by tests/fuzz/fuzz-address.c). */
static gboolean
is_atext (guchar c)
{
  return g_ascii_isalnum (c) || (c != '\0' && strchr ("!#$%&'*+-/=?^_`{|}~", c) != NULL)
    || c >= 0x80;
}

static gboolean
is_let_dig (guchar c)
{
  return g_ascii_isalnum (c) || c >= 0x80;
}

/* Dot-string = Atom *("." Atom). */
static gboolean
is_dot_string (const char *s, gsize len)
{
  if (len == 0 || s[0] == '.' || s[len - 1] == '.')
    return FALSE;
  for (gsize i = 0; i < len; i++)
    {
      guchar c = s[i];
      if (c == '.')
        {
          if (s[i + 1] == '.')
            return FALSE;
        }
      else if (!is_atext (c))
        return FALSE;
    }
  return TRUE;
}

static gboolean
valid_address_literal (const char *s, gsize len, const char **reason)
{
  /* s includes the brackets */
  g_autofree char *inner = g_strndup (s + 1, len - 2);
  guchar buf[16];
  if (g_ascii_strncasecmp (inner, "IPv6:", 5) == 0)
    {
      if (inet_pton (AF_INET6, inner + 5, buf) == 1)
        return TRUE;
      *reason = "invalid IPv6 address literal";
      return FALSE;
    }
  if (!inner[0])
    {
      *reason = "empty address literal";
      return FALSE;
    }
  if (g_ascii_isdigit (inner[0]) && strchr (inner, ':'))
    {
      *reason = "IPv6 address literal needs the IPv6: prefix";
      return FALSE;
    }
  if (g_ascii_isdigit (inner[0]))
    {
      if (inet_pton (AF_INET, inner, buf) == 1)
        return TRUE;
      *reason = "invalid IPv4 address literal";
      return FALSE;
    }
  /* General-address-literal = Standardized-tag ":" 1*dcontent */
  const char *colon = strchr (inner, ':');
  if (!colon || colon == inner || colon[1] == '\0')
    {
      *reason = "invalid address literal";
      return FALSE;
    }
  for (const char *p = inner; p < colon; p++)
    if (!g_ascii_isalnum (*p) && *p != '-')
      {
        *reason = "invalid address literal tag";
        return FALSE;
      }
  for (const char *p = colon + 1; *p; p++)
    if ((guchar) *p < 33 || (guchar) *p > 126 || *p == '[' || *p == '\\' || *p == ']')
      {
        *reason = "invalid character in address literal";
        return FALSE;
      }
  return TRUE;
}

gboolean
gm_valid_domain (const char *s, gsize len, const char **reason)
{
  if (len == 0)
    {
      *reason = "empty domain";
      return FALSE;
    }
  /* RFC 5321 §4.5.3.1.2 bounds "a domain name or number": address literals
   * too, or an EHLO literal of any length would go into Received:. */
  if (len > GM_MAX_DOMAIN)
    {
      *reason = "domain longer than 255 octets";
      return FALSE;
    }
  if (s[0] == '[')
    {
      if (len == 2 && s[1] == ']')
        {
          *reason = "empty address literal";
          return FALSE;
        }
      if (len < 3 || s[len - 1] != ']')
        {
          *reason = "unterminated address literal";
          return FALSE;
        }
      return valid_address_literal (s, len, reason);
    }
  gsize label = 0;
  for (gsize i = 0; i <= len; i++)
    {
      guchar c = i < len ? s[i] : '.';
      if (c == '.')
        {
          if (label == 0)
            {
              *reason = "empty label in domain";
              return FALSE;
            }
          if (s[i - 1] == '-')
            {
              *reason = "domain label ends with a hyphen";
              return FALSE;
            }
          label = 0;
          continue;
        }
      if (label == 0 && !is_let_dig (c))
        {
          *reason = "domain label must start with a letter or digit";
          return FALSE;
        }
      if (!is_let_dig (c) && c != '-')
        {
          *reason = "invalid character in domain";
          return FALSE;
        }
      if (++label > 63)
        {
          *reason = "domain label longer than 63 octets";
          return FALSE;
        }
    }
  if (!g_utf8_validate (s, len, NULL))
    {
      *reason = "domain is not valid UTF-8";
      return FALSE;
    }
  return TRUE;
}

gboolean
gm_parse_decimal (const char *s, guint64 *value)
{
  guint64 v = 0;
  gsize n = 0;
  for (; s[n]; n++)
    {
      guint digit = s[n] - '0';
      if (!g_ascii_isdigit (s[n]) || n >= 20 || v > (G_MAXUINT64 - digit) / 10)
        return FALSE;
      v = v * 10 + digit;
    }
  if (n == 0)
    return FALSE;
  *value = v;
  return TRUE;
}

/* Local-part = Dot-string / Quoted-string. Advances *P past it and returns the
 * canonical form, or NULL with *REASON. */
static char *
parse_local_part (const char **pp, const char **reason)
{
  const char *p = *pp;
  GString *local = g_string_new (NULL);
  if (*p == '"')
    {
      gsize raw = 1;
      for (p++;; p++, raw++)
        {
          guchar c = *p;
          if (c == '"')
            break;
          if (c == '\0')
            {
              *reason = "unterminated quoted local part";
              g_string_free (local, TRUE);
              return NULL;
            }
          if (c == '\\')
            {
              p++, raw++;
              if ((guchar) *p < 32 || (guchar) *p > 126)
                goto bad_quoted;
              g_string_append_c (local, *p);
              continue;
            }
          if (c < 32 || c == 127)
            goto bad_quoted;
          g_string_append_c (local, c);
        }
      p++;
      raw += 1;
      if (raw > MAX_LOCAL)
        goto too_long;
      if (!is_dot_string (local->str, local->len))
        {
          /* Keep the quoted form: the content needs it. */
          GString *q = g_string_new ("\"");
          for (gsize i = 0; i < local->len; i++)
            {
              if (local->str[i] == '"' || local->str[i] == '\\')
                g_string_append_c (q, '\\');
              g_string_append_c (q, local->str[i]);
            }
          g_string_append_c (q, '"');
          g_string_free (local, TRUE);
          local = q;
        }
    }
  else
    {
      const char *start = p;
      while (is_atext (*p) || *p == '.')
        p++;
      if (p - start > MAX_LOCAL)
        goto too_long;
      if (!is_dot_string (start, p - start))
        {
          *reason = p == start ? "missing local part" : "invalid local part";
          g_string_free (local, TRUE);
          return NULL;
        }
      g_string_append_len (local, start, p - start);
    }
  if (!g_utf8_validate (local->str, local->len, NULL))
    {
      *reason = "local part is not valid UTF-8";
      g_string_free (local, TRUE);
      return NULL;
    }
  *pp = p;
  return g_string_free (local, FALSE);

bad_quoted:
  *reason = "invalid character in quoted local part";
  g_string_free (local, TRUE);
  return NULL;
too_long:
  *reason = "local part longer than 64 octets";
  g_string_free (local, TRUE);
  return NULL;
}

/* Domain or address literal at *PP, ending at '>' or ',' or ':'. */
static gboolean
scan_domain (const char **pp, const char **reason)
{
  const char *start = *pp, *p = start;
  if (*p == '[')
    {
      while (*p && *p != ']')
        p++;
      if (*p == ']')
        p++;
    }
  else
    while (*p && *p != '>' && *p != ',' && *p != ':' && *p != ' ')
      p++;
  if (!gm_valid_domain (start, p - start, reason))
    return FALSE;
  *pp = p;
  return TRUE;
}

static gboolean
has_non_ascii (const char *s)
{
  for (; *s; s++)
    if ((guchar) *s >= 0x80)
      return TRUE;
  return FALSE;
}

static gboolean
parse_params (char *p, GmParam *params, guint *n_params, const char **reason)
{
  *n_params = 0;
  if (*p && *p != ' ')
    {
      *reason = "expected a space after the address";
      return FALSE;
    }
  for (;;)
    {
      while (*p == ' ')
        p++;
      if (!*p)
        return TRUE;
      if (*n_params == GM_MAX_PARAMS)
        {
          *reason = "too many parameters";
          return FALSE;
        }
      GmParam *param = &params[(*n_params)++];
      param->keyword = p;
      param->value = NULL;
      if (!g_ascii_isalnum (*p))
        {
          *reason = "invalid parameter keyword";
          return FALSE;
        }
      while (g_ascii_isalnum (*p) || *p == '-')
        p++;
      if (*p == '=')
        {
          *p++ = '\0';
          param->value = p;
          /* esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531) */
          while (*p && *p != ' ')
            {
              guchar c = *p;
              if (c < 33 || c == '=' || c == 127)
                {
                  *reason = "invalid character in parameter value";
                  return FALSE;
                }
              p++;
            }
          if (p == param->value)
            {
              *reason = "empty parameter value";
              return FALSE;
            }
        }
      if (*p == ' ')
        *p++ = '\0';
      else if (*p)
        {
          *reason = "invalid parameter keyword";
          return FALSE;
        }
    }
}

gboolean
gm_parse_path_and_params (char *line, GmPathFlags flags, GmPath *path, GmParam *params,
                          guint *n_params, const char **reason, gboolean *params_failed)
{
  if (params_failed)
    *params_failed = FALSE;
  const char *p = line;
  memset (path, 0, sizeof *path);
  *n_params = 0;
  while (*p == ' ')
    p++;
  if (*p != '<')
    {
      *reason = "address must be enclosed in <>";
      return FALSE;
    }
  const char *open = p++;
  char *local = NULL, *domain = NULL;

  if (*p == '>' && (flags & GM_PATH_SENDER))
    {
      p++;
      local = g_strdup ("");
      goto params;
    }
  /* Source route: @one,@two: — parsed and ignored. */
  if (*p == '@')
    {
      for (;;)
        {
          p++;
          if (!scan_domain (&p, reason))
            return FALSE;
          if (*p == ',' && p[1] == '@')
            {
              p++;
              continue;
            }
          if (*p != ':')
            {
              *reason = "invalid source route";
              return FALSE;
            }
          p++;
          break;
        }
    }
  local = parse_local_part (&p, reason);
  if (!local)
    return FALSE;
  if (*p == '>' && (flags & GM_PATH_RECIPIENT) && g_ascii_strcasecmp (local, "postmaster") == 0)
    {
      p++;
      goto params;
    }
  if (*p != '@')
    {
      *reason = *p == '>' ? "missing domain" : "invalid character in local part";
      g_free (local);
      return FALSE;
    }
  p++;
  const char *dstart = p;
  if (!scan_domain (&p, reason))
    {
      g_free (local);
      return FALSE;
    }
  domain = g_strndup (dstart, p - dstart);
  if (*p != '>')
    {
      *reason = "missing closing >";
      g_free (local);
      g_free (domain);
      return FALSE;
    }
  p++;

params:
  if (p - open > MAX_PATH)
    {
      *reason = "address longer than 256 octets";
      g_free (local);
      g_free (domain);
      return FALSE;
    }
  if (!parse_params ((char *) p, params, n_params, reason))
    {
      if (params_failed)
        *params_failed = TRUE;
      g_free (local);
      g_free (domain);
      return FALSE;
    }
  path->local = local;
  path->domain = domain;
  path->utf8 = has_non_ascii (local) || (domain && has_non_ascii (domain));
  return TRUE;
}
