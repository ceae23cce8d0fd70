/* envelope-edit.c — changing an envelope the way rules do (see the header). */
#include "config.h"
#include "envelope-edit.h"

#include <string.h>

#include "smtp-parse.h"

char *
gm_mailbox_name (const char *local)
{
  if (!*local || local[0] == '.' || local[0] == '"')
    return NULL;
  for (const char *p = local; *p; p++)
    if (*p == '/' || (guchar) *p < 32 || *p == 127)
      return NULL;
  return g_utf8_strdown (local, -1);
}

gboolean
gm_is_local_domain (const char *domain)
{
  for (char **d = gm_config.local_domains; d && *d; d++)
    if (g_ascii_strcasecmp (*d, domain) == 0)
      return TRUE;
  return FALSE;
}

/* Parse ADDRESS (without angle brackets) as a path. */
static gboolean
parse_address (const char *address, GmPathFlags flags, GmPath *path, const char **reason)
{
  g_autofree char *line = g_strdup_printf ("<%s>", address);
  GmParam params[GM_MAX_PARAMS];
  guint n_params;
  return gm_parse_path_and_params (line, flags, path, params, &n_params, reason, NULL);
}

char *
gm_envelope_canonical_sender (const char *address, const char **reason)
{
  GmPath path;
  if (!parse_address (address, GM_PATH_SENDER, &path, reason))
    return NULL;
  char *canonical = gm_path_to_string (&path);
  gm_path_clear (&path);
  return canonical;
}

gboolean
gm_envelope_set_sender (GmEnvelope *env, const char *address, const char **reason)
{
  char *canonical = gm_envelope_canonical_sender (address, reason);
  if (!canonical)
    return FALSE;
  g_free (env->sender);
  env->sender = canonical;
  return TRUE;
}

GmSpoolRcpt *
gm_envelope_find_recipient (const GmEnvelope *env, const char *address, guint *index)
{
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, i);
      if (strcmp (r->address, address) == 0)
        {
          if (index)
            *index = i;
          return r;
        }
    }
  return NULL;
}

gboolean
gm_envelope_add_recipient (GmEnvelope *env, const char *address, const char **reason)
{
  GmPath path;
  if (!parse_address (address, GM_PATH_RECIPIENT, &path, reason))
    return FALSE;
  g_autofree char *canonical = gm_path_to_string (&path);
  g_autofree char *mailbox = gm_mailbox_name (path.local);
  gboolean local = !path.domain || gm_is_local_domain (path.domain);
  gm_path_clear (&path);
  if (!local)
    *reason = "not in a local domain (delivery to other hosts does not exist yet)";
  else if (!mailbox)
    *reason = "local part not usable as a mailbox name";
  else if (env->rcpts->len >= gm_config.max_recipients)
    *reason = "too many recipients";
  if (!local || !mailbox || env->rcpts->len >= gm_config.max_recipients)
    return FALSE;
  if (!gm_envelope_find_recipient (env, canonical, NULL))
    {
      g_autofree char *destination = gm_config_local_path (mailbox);
      gm_envelope_add_rcpt (env, canonical, gm_config.local_transport, destination);
    }
  return TRUE;
}

gboolean
gm_envelope_remove_recipient (GmEnvelope *env, const char *address)
{
  guint index;
  if (!gm_envelope_find_recipient (env, address, &index))
    return FALSE;
  g_ptr_array_remove_index (env->rcpts, index);
  return TRUE;
}

gboolean
gm_envelope_set_mailbox (GmEnvelope *env, const char *address, GmTransport transport,
                         const char *template, const char **reason)
{
  GmSpoolRcpt *r = gm_envelope_find_recipient (env, address, NULL);
  GmPath path;
  if (!r)
    {
      *reason = "not a recipient of this message";
      return FALSE;
    }
  if (!parse_address (address, GM_PATH_RECIPIENT, &path, reason))
    return FALSE;
  g_autofree char *mailbox = gm_mailbox_name (path.local);
  gm_path_clear (&path);
  if (!mailbox)
    {
      *reason = "local part not usable as a mailbox name";
      return FALSE;
    }
  r->transport = transport;
  g_free (r->destination);
  r->destination = gm_mailbox_path (template, mailbox);
  return TRUE;
}
