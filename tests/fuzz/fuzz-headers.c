/* fuzz-headers.c — the header scanning and editing that data rules apply to
 * a received message (src/policy.c: header-ref, header-add!, header-remove!,
 * header-set!, header-rename! and the header list).
 *
 * Those primitives are static in policy.c and take Scheme values: this file
 * includes policy.c to reach them, and starts Guile once (no module is
 * loaded: only the C primitives run). Should policy.c rename them, this
 * target stops compiling, loudly.
 *
 * Input: one byte N, then N % 8 operations, then the message (LF line ends,
 * as the session stores it; NUL and 8-bit bytes allowed). An operation is a
 * kind byte, a length byte and that many bytes of header name, a length byte
 * and that many bytes of value (or new name). Names and values that
 * (guillemot)'s check-header would refuse are not passed, as the Scheme side
 * never passes them.
 *
 * Checks: no operation changes what follows the header section (the
 * message's first empty line); after header-set! the field has exactly the
 * value set; after header-remove! it is gone; after header-rename! the old
 * name is gone and the new one has gained its fields; after header-add!
 * the value is first (top) or last (bottom); every header listed has a
 * name without ':' and every value reads as Scheme text. */
#include "policy.c"

#include "fuzz.h"

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  scm_init_guile ();
  gm_log_set_writer (fuzz_log_discard);
  return 0;
}

/* Where the body starts: after the first empty line, or the end. */
static gsize
body_start (const GString *m)
{
  if (m->len > 0 && m->str[0] == '\n')
    return 1;
  const char *blank = memmem (m->str, m->len, "\n\n", 2);
  return blank ? (gsize) (blank - m->str) + 2 : m->len;
}

/* (guillemot)'s check-header: a name of printable ASCII without ':', a
 * value without NUL or CR whose line breaks fold. */
static gboolean
valid_name (const char *s, gsize len)
{
  if (len == 0)
    return FALSE;
  for (gsize i = 0; i < len; i++)
    if ((guchar) s[i] <= ' ' || (guchar) s[i] >= 127 || s[i] == ':')
      return FALSE;
  return TRUE;
}

static gboolean
valid_value (const char *s, gsize len)
{
  if (memchr (s, '\0', len) || memchr (s, '\r', len))
    return FALSE;
  for (gsize i = 0; i < len; i++)
    if (s[i] == '\n')
      {
        /* The next line starts with white space and is not blank. */
        gsize j = i + 1;
        if (j >= len || (s[j] != ' ' && s[j] != '\t'))
          return FALSE;
        while (j < len && (s[j] == ' ' || s[j] == '\t'))
          j++;
        if (j >= len || s[j] == '\n')
          return FALSE;
      }
  return TRUE;
}

static SCM
text (const char *s, gsize len)
{
  return g_utf8_validate (s, len, NULL) ? scm_from_utf8_stringn (s, len)
    : scm_from_latin1_stringn (s, len);
}

/* What header-ref answers for a value set as VALUE: without the leading
 * white space, the line breaks unfolded. */
static SCM
expected_value (const char *s, gsize len)
{
  GString *v = g_string_new (NULL);
  gsize i = 0;
  while (i < len && (s[i] == ' ' || s[i] == '\t'))
    i++;
  for (; i < len; i++)
    if (s[i] != '\n')
      g_string_append_c (v, s[i]);
  SCM result = text (v->str, v->len);
  g_string_free (v, TRUE);
  return result;
}

static SCM
values_of (SCM msg, SCM name)
{
  return message_header_values (msg, name);
}

static void
check_header_list (SCM msg)
{
  for (SCM l = message_headers (msg); scm_is_pair (l); l = scm_cdr (l))
    {
      SCM name = scm_caar (l), value = scm_cdar (l);
      FUZZ_CHECK (scm_is_string (name) && scm_is_string (value), "header list entry");
      FUZZ_CHECK (scm_is_false (scm_string_index (name, SCM_MAKE_CHAR (':'), SCM_UNDEFINED,
                                                  SCM_UNDEFINED)), "':' in a header name");
      FUZZ_CHECK (scm_is_false (scm_string_index (value, SCM_MAKE_CHAR ('\n'), SCM_UNDEFINED,
                                                  SCM_UNDEFINED)), "unfolded value with LF");
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  const char *p = (const char *) data + 1, *end = (const char *) data + size;
  guint n_ops = data[0] % 8;
  typedef struct { guint kind; const char *name, *value; gsize name_len, value_len; } Op;
  Op ops[8];
  guint n = 0;
  for (; n < n_ops; n++)
    {
      if (end - p < 2)
        break;
      ops[n].kind = (guchar) p[0];
      ops[n].name_len = MIN ((gsize) (guchar) p[1], (gsize) (end - p - 2));
      ops[n].name = p + 2;
      p += 2 + ops[n].name_len;
      if (p >= end)
        break;
      ops[n].value_len = MIN ((gsize) (guchar) p[0], (gsize) (end - p - 1));
      ops[n].value = p + 1;
      p += 1 + ops[n].value_len;
    }

  MessageHandle handle = { g_string_new_len (p, end - p) };
  GString *m = handle.body;
  SCM msg = scm_from_pointer (&handle, NULL);
  check_header_list (msg);
  for (guint i = 0; i < n; i++)
    {
      const Op *op = &ops[i];
      gsize body_len = m->len - body_start (m);
      g_autofree char *body = g_memdup2 (m->str + body_start (m), body_len + 1);
      SCM name = text (op->name, op->name_len);
      SCM value = text (op->value, op->value_len);
      /* A field at the top would absorb a first line that starts with white
       * space (not a valid header section anyway): no value check then. */
      gboolean folded_start = m->len > 0 && (m->str[0] == ' ' || m->str[0] == '\t');
      gboolean name_ok = valid_name (op->name, op->name_len);
      SCM before = values_of (msg, name);
      switch (op->kind % 7)
        {
        case 0:
          check_header_list (msg);
          break;
        case 1:
          (void) values_of (msg, value);
          break;
        case 2: case 3:
          if (!name_ok || !valid_value (op->value, op->value_len))
            break;
          message_add_header (msg, name, value, scm_from_bool (op->kind % 7 == 3));
          {
            SCM after = values_of (msg, name);
            SCM expected = expected_value (op->value, op->value_len);
            FUZZ_CHECK (scm_to_size_t (scm_length (after))
                        == scm_to_size_t (scm_length (before)) + 1, "header-add! count");
            if (op->kind % 7 == 3)
              FUZZ_CHECK (scm_is_true (scm_string_eq (scm_car (scm_last_pair (after)), expected,
                                                      SCM_UNDEFINED, SCM_UNDEFINED,
                                                      SCM_UNDEFINED, SCM_UNDEFINED)),
                          "header-add! at the bottom: not the last value");
            else if (!folded_start)
              FUZZ_CHECK (scm_is_true (scm_string_eq (scm_car (after), expected, SCM_UNDEFINED,
                                                      SCM_UNDEFINED, SCM_UNDEFINED,
                                                      SCM_UNDEFINED)),
                          "header-add! at the top: not the first value");
          }
          break;
        case 4:
          message_remove_header (msg, name);
          FUZZ_CHECK (scm_is_null (values_of (msg, name)), "header-remove! left some");
          break;
        case 5:
          if (!name_ok || !valid_value (op->value, op->value_len))
            break;
          message_set_header (msg, name, value);
          {
            SCM after = values_of (msg, name);
            FUZZ_CHECK (scm_to_size_t (scm_length (after)) == 1, "header-set!: %zu fields",
                        scm_to_size_t (scm_length (after)));
            if (!folded_start || scm_is_pair (before))
              FUZZ_CHECK (scm_is_true (scm_string_eq (scm_car (after),
                                                      expected_value (op->value, op->value_len),
                                                      SCM_UNDEFINED, SCM_UNDEFINED,
                                                      SCM_UNDEFINED, SCM_UNDEFINED)),
                          "header-set!: another value");
          }
          break;
        case 6:
          if (!valid_name (op->value, op->value_len))
            break;
          {
            SCM renamed_before = values_of (msg, value);
            message_rename_header (msg, name, value);
            gboolean same = op->name_len == op->value_len
              && g_ascii_strncasecmp (op->name, op->value, op->name_len) == 0;
            if (!same)
              {
                FUZZ_CHECK (scm_is_null (values_of (msg, name)), "header-rename! left the old");
                FUZZ_CHECK (scm_to_size_t (scm_length (values_of (msg, value)))
                            == scm_to_size_t (scm_length (renamed_before))
                            + scm_to_size_t (scm_length (before)), "header-rename! count");
              }
          }
          break;
        }
      FUZZ_CHECK (m->len - body_start (m) == body_len
                  && memcmp (m->str + body_start (m), body, body_len) == 0,
                  "operation %u changed the body", op->kind % 7);
    }
  check_header_list (msg);
  scm_remember_upto_here_1 (msg);
  g_string_free (m, TRUE);
  return 0;
}
