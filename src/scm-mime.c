/* scm-mime.c — the MIME structure of a message, for data rules
 * ((guillemot mime), DESIGN.md §4).
 *
 * (%mime-parts MSG) parses the message of a data rule with GMime 3 and lists
 * its leaf parts depth first, descending into multiparts (RFC 2046 §5.1) and
 * attached messages (message/rfc822, RFC 2046 §5.2.1): for each one its
 * content type, charset, file name (Content-Disposition filename or
 * Content-Type name, RFC 2183 and RFC 2231, decoded by GMime), disposition
 * and decoded size. (%mime-part-body MSG PARSE INDEX) decodes one part's
 * content (base64, quoted-printable: RFC 2045 §6) only when a rule asks.
 *
 * The input is hostile. GMime itself stops nesting at 1024 levels, but
 * scanning for the boundaries of many open multiparts costs time in
 * proportion to lines times depth: the parse reads the message through a
 * stream that reports end of input once the time budget is spent, so that a
 * crafted message holds up the main loop for a bounded time. The walk stops
 * at GM_MIME_MAX_DEPTH levels and GM_MIME_MAX_PARTS parts. Whatever was cut
 * is reported, so that a rule can refuse what it could not inspect.
 *
 * A parse is a foreign object (STYLE.md §13) that owns a copy of the message
 * and the GMime objects; the part descriptions refer to it, so a part's body
 * is always decoded from the parse it was listed from, even after a rule
 * changed the headers. The last parse is kept for the message object it came
 * from while the message is byte for byte the same, and dropped when the main
 * loop is next idle. */
#include "config.h"
#include "scm-mime.h"

#include <string.h>
#include <gmime/gmime.h>
#include <libguile.h>

#include "policy.h"
#include "settings.h"

/* ---- A memory stream with a time budget --------------------------------- */

/* Reads as GMimeStreamMem until DEADLINE (monotonic microseconds, 0: none),
 * then as the end of the stream. Substreams (the parts' contents) are plain
 * GMimeStreamMem over the same buffer, so decoding later is not affected. */
typedef struct
{
  GMimeStreamMem parent;
  gint64 deadline;
  gboolean cut;                 /* the deadline passed while reading */
} GmBudgetStream;

typedef struct
{
  GMimeStreamMemClass parent_class;
} GmBudgetStreamClass;

static GType gm_budget_stream_get_type (void);
G_DEFINE_TYPE (GmBudgetStream, gm_budget_stream, GMIME_TYPE_STREAM_MEM)

static gboolean
budget_spent (GmBudgetStream *s)
{
  if (!s->cut && s->deadline && g_get_monotonic_time () > s->deadline)
    s->cut = TRUE;
  return s->cut;
}

static ssize_t
budget_stream_read (GMimeStream *stream, char *buf, size_t len)
{
  if (budget_spent ((GmBudgetStream *) stream))
    return 0;
  return GMIME_STREAM_CLASS (gm_budget_stream_parent_class)->read (stream, buf, len);
}

static gboolean
budget_stream_eos (GMimeStream *stream)
{
  GmBudgetStream *s = (GmBudgetStream *) stream;
  return (s->deadline && s->cut)
    || GMIME_STREAM_CLASS (gm_budget_stream_parent_class)->eos (stream);
}

static void
gm_budget_stream_class_init (GmBudgetStreamClass *klass)
{
  GMimeStreamClass *stream_class = GMIME_STREAM_CLASS (klass);
  stream_class->read = budget_stream_read;
  stream_class->eos = budget_stream_eos;
}

static void
gm_budget_stream_init (GmBudgetStream *s)
{
}

/* A stream over a copy of LEN bytes at DATA. */
static GmBudgetStream *
budget_stream_new (const char *data, gsize len)
{
  GmBudgetStream *s = g_object_new (gm_budget_stream_get_type (), NULL);
  g_mime_stream_construct (GMIME_STREAM (s), 0, -1);
  GByteArray *bytes = g_byte_array_sized_new (len);
  g_byte_array_append (bytes, (const guint8 *) data, len);
  g_mime_stream_mem_set_byte_array (GMIME_STREAM_MEM (s), bytes);
  g_mime_stream_mem_set_owner (GMIME_STREAM_MEM (s), TRUE);
  return s;
}

/* ---- Parsing and walking ----------------------------------------------- */

typedef struct
{
  GMimeObject *object;          /* owned by the parse's message */
  char *content_type;           /* "type/subtype", lower case */
  char *charset;                /* lower case, or NULL */
  char *filename;               /* Content-Disposition filename, else Content-Type name */
  char *name;                   /* Content-Type name when it differs from filename */
  char *disposition;            /* lower case, or NULL */
  gsize size;                   /* of the decoded content */
} MimeLeaf;

typedef struct
{
  GmBudgetStream *stream;       /* the copy of the message: the contents are its substreams */
  GMimeMessage *message;        /* NULL when GMime gave nothing */
  GArray *leaves;               /* of MimeLeaf, depth first */
  const char *truncated;        /* why parts are missing, or NULL */
} MimeParse;

static void
mime_parse_free (MimeParse *p)
{
  for (guint i = 0; i < p->leaves->len; i++)
    {
      MimeLeaf *leaf = &g_array_index (p->leaves, MimeLeaf, i);
      g_free (leaf->content_type);
      g_free (leaf->charset);
      g_free (leaf->filename);
      g_free (leaf->name);
      g_free (leaf->disposition);
    }
  g_array_free (p->leaves, TRUE);
  g_clear_object (&p->message);
  g_clear_object (&p->stream);
  g_free (p);
}

static void
truncate_parts (MimeParse *p, const char *why)
{
  if (!p->truncated)
    p->truncated = why;
}

/* Text from a header for Scheme: valid UTF-8, or NULL. */
static char *
header_text (const char *s, gboolean lower)
{
  if (!s)
    return NULL;
  char *valid = g_utf8_make_valid (s, -1);
  if (!lower)
    return valid;
  char *down = g_ascii_strdown (valid, -1);
  g_free (valid);
  return down;
}

/* Write OBJECT's decoded content to OUT; returns FALSE when it has none. */
static gboolean
write_content (GMimeObject *object, GMimeStream *out)
{
  if (!GMIME_IS_PART (object))
    return FALSE;
  GMimeDataWrapper *content = g_mime_part_get_content (GMIME_PART (object));
  if (!content)
    return FALSE;
  g_mime_data_wrapper_write_to_stream (content, out);
  return TRUE;
}

static void
add_leaf (MimeParse *p, GMimeObject *object)
{
  if (p->leaves->len >= GM_MIME_MAX_PARTS)
    {
      truncate_parts (p, "too-many-parts");
      return;
    }
  MimeLeaf leaf = { .object = object };
  GMimeContentType *ct = g_mime_object_get_content_type (object);
  char *type = ct ? g_mime_content_type_get_mime_type (ct) : NULL;
  leaf.content_type = header_text (type ? type : "text/plain", TRUE);
  g_free (type);
  leaf.charset = header_text (g_mime_object_get_content_type_parameter (object, "charset"), TRUE);
  const char *filename = g_mime_object_get_content_disposition_parameter (object, "filename");
  const char *name = g_mime_object_get_content_type_parameter (object, "name");
  leaf.filename = header_text (filename ? filename : name, FALSE);
  if (filename && name && strcmp (filename, name) != 0)
    leaf.name = header_text (name, FALSE);
  leaf.disposition = header_text (g_mime_object_get_disposition (object), TRUE);
  GMimeStream *null = g_mime_stream_null_new ();
  if (write_content (object, null))
    leaf.size = GMIME_STREAM_NULL (null)->written;
  g_object_unref (null);
  g_array_append_val (p->leaves, leaf);
}

/* The body of the message attached as OBJECT (message/rfc822), or NULL. */
static GMimeObject *
attached_body (GMimeObject *object)
{
  if (!GMIME_IS_MESSAGE_PART (object))
    return NULL;
  GMimeMessage *inner = g_mime_message_part_get_message (GMIME_MESSAGE_PART (object));
  return inner ? g_mime_message_get_mime_part (inner) : NULL;
}

/* Depth first; DEPTH is the number of containers around OBJECT. Containers
 * are walked into, never listed; an attached message that GMime could not
 * read is listed as a part of its own. */
static void
walk (MimeParse *p, GMimeObject *object, guint depth)
{
  if (p->leaves->len >= GM_MIME_MAX_PARTS && p->truncated)
    return;
  GMimeObject *inner = attached_body (object);
  if (!GMIME_IS_MULTIPART (object) && !inner)
    {
      add_leaf (p, object);
      return;
    }
  if (depth >= GM_MIME_MAX_DEPTH)
    {
      truncate_parts (p, "too-deep");
      return;
    }
  if (inner)
    {
      walk (p, inner, depth + 1);
      return;
    }
  GMimeMultipart *mp = GMIME_MULTIPART (object);
  int n = g_mime_multipart_get_count (mp);
  for (int i = 0; i < n; i++)
    walk (p, g_mime_multipart_get_part (mp, i), depth + 1);
}

static MimeParse *
mime_parse (const GString *body)
{
  MimeParse *p = g_new0 (MimeParse, 1);
  p->leaves = g_array_new (FALSE, TRUE, sizeof (MimeLeaf));
  p->stream = budget_stream_new (body->str, body->len);
  guint budget = MIN (GM_MIME_PARSE_BUDGET, MAX (gm_config.rule_time_limit / 2, 1));
  p->stream->deadline = g_get_monotonic_time () + (gint64) budget * 1000;
  GMimeParser *parser = g_mime_parser_new_with_stream (GMIME_STREAM (p->stream));
  p->message = g_mime_parser_construct_message (parser, NULL);
  g_object_unref (parser);
  p->stream->deadline = 0;
  if (p->stream->cut)
    truncate_parts (p, "too-slow");
  GMimeObject *top = p->message ? g_mime_message_get_mime_part (p->message) : NULL;
  if (top)
    walk (p, top, 0);
  return p;
}

/* ---- Scheme ------------------------------------------------------------ */

static SCM parse_type;          /* <mime-parse> foreign objects: one slot, the MimeParse */
static SCM cache;               /* #(message-object result) of the last parse, protected */
static guint cache_idle;        /* the idle source that drops it */

static void
finalize_parse (SCM parse)
{
  MimeParse *p = scm_foreign_object_ref (parse, 0);
  if (p)
    mime_parse_free (p);
}

static gboolean
drop_cache (gpointer unused)
{
  scm_c_vector_set_x (cache, 0, SCM_BOOL_F);
  scm_c_vector_set_x (cache, 1, SCM_BOOL_F);
  cache_idle = 0;
  return G_SOURCE_REMOVE;
}

static SCM
opt_string (const char *s)
{
  return s ? scm_from_utf8_string (s) : SCM_BOOL_F;
}

static SCM
leaf_to_scm (const MimeLeaf *leaf, guint index)
{
  SCM names = SCM_EOL;
  if (leaf->name)
    names = scm_cons (scm_from_utf8_string (leaf->name), names);
  if (leaf->filename)
    names = scm_cons (scm_from_utf8_string (leaf->filename), names);
  SCM v = scm_c_make_vector (7, SCM_BOOL_F);
  scm_c_vector_set_x (v, 0, scm_from_uint (index));
  scm_c_vector_set_x (v, 1, scm_from_utf8_string (leaf->content_type));
  scm_c_vector_set_x (v, 2, opt_string (leaf->charset));
  scm_c_vector_set_x (v, 3, opt_string (leaf->filename));
  scm_c_vector_set_x (v, 4, names);
  scm_c_vector_set_x (v, 5, opt_string (leaf->disposition));
  scm_c_vector_set_x (v, 6, scm_from_size_t (leaf->size));
  return v;
}

/* Is RESULT, cached for MSG, still right for BODY? */
static gboolean
cache_valid (SCM msg, const GString *body)
{
  if (!scm_is_eq (scm_c_vector_ref (cache, 0), msg))
    return FALSE;
  MimeParse *p = scm_foreign_object_ref (scm_c_vector_ref (scm_c_vector_ref (cache, 1), 0), 0);
  GByteArray *bytes = g_mime_stream_mem_get_byte_array (GMIME_STREAM_MEM (p->stream));
  return bytes->len == body->len && memcmp (bytes->data, body->str, body->len) == 0;
}

/* (%mime-parts msg) → #(PARSE TRUNCATED PARTS): PARTS a list of
 * #(INDEX CONTENT-TYPE CHARSET FILENAME NAMES DISPOSITION SIZE), TRUNCATED #f
 * or the symbol too-deep, too-many-parts or too-slow. */
static SCM
mime_parts (SCM msg)
{
  GString *body = gm_policy_message_body (msg, "message-parts");
  if (cache_valid (msg, body))
    return scm_c_vector_ref (cache, 1);

  MimeParse *p = mime_parse (body);
  /* From here the garbage collector owns P, and frees it in finalize_parse. */
  SCM parse = scm_make_foreign_object_1 (parse_type, p);
  scm_gc_register_allocation (2 * (size_t) body->len);
  SCM parts = SCM_EOL;
  for (guint i = p->leaves->len; i > 0; i--)
    parts = scm_cons (leaf_to_scm (&g_array_index (p->leaves, MimeLeaf, i - 1), i - 1), parts);
  SCM result = scm_c_make_vector (3, SCM_BOOL_F);
  scm_c_vector_set_x (result, 0, parse);
  scm_c_vector_set_x (result, 1, p->truncated ? scm_from_utf8_symbol (p->truncated) : SCM_BOOL_F);
  scm_c_vector_set_x (result, 2, parts);
  scm_c_vector_set_x (cache, 0, msg);
  scm_c_vector_set_x (cache, 1, result);
  if (!cache_idle)
    cache_idle = g_idle_add (drop_cache, NULL);
  return result;
}

static void
free_byte_array (void *bytes)
{
  g_byte_array_free (bytes, TRUE);
}

/* (%mime-part-body msg parse index) → the decoded content, a bytevector */
static SCM
mime_part_body (SCM msg, SCM parse, SCM index)
{
  gm_policy_message_body (msg, "part-body");     /* only while the data rules run */
  scm_assert_foreign_object_type (parse_type, parse);
  MimeParse *p = scm_foreign_object_ref (parse, 0);
  if (!scm_is_unsigned_integer (index, 0, p->leaves->len ? p->leaves->len - 1 : 0)
      || p->leaves->len == 0)
    scm_out_of_range ("part-body", index);
  const MimeLeaf *leaf = &g_array_index (p->leaves, MimeLeaf, scm_to_uint (index));

  GMimeStream *out = g_mime_stream_mem_new ();
  write_content (leaf->object, out);
  GByteArray *bytes = g_mime_stream_mem_get_byte_array (GMIME_STREAM_MEM (out));
  g_mime_stream_mem_set_owner (GMIME_STREAM_MEM (out), FALSE);
  g_object_unref (out);
  /* Decoding never makes more than was received; say so anyway. */
  GByteArray *received = g_mime_stream_mem_get_byte_array (GMIME_STREAM_MEM (p->stream));
  if (bytes->len > received->len)
    g_byte_array_set_size (bytes, received->len);

  scm_dynwind_begin (0);
  scm_dynwind_unwind_handler (free_byte_array, bytes, SCM_F_WIND_EXPLICITLY);
  SCM bv = scm_c_make_bytevector (bytes->len);
  if (bytes->len)
    memcpy (SCM_BYTEVECTOR_CONTENTS (bv), bytes->data, bytes->len);
  scm_dynwind_end ();
  scm_remember_upto_here_1 (parse);
  return bv;
}

typedef struct
{
  const char *name;
  int req, opt;
  scm_t_subr fn;
  const char *doc;
} Primitive;

static const Primitive primitives[] = {
  { "%mime-parts", 1, 0, (scm_t_subr) mime_parts,
    "(%mime-parts MSG): parse the message object MSG of a data rule; return "
    "#(PARSE TRUNCATED PARTS), PARTS a list of #(INDEX CONTENT-TYPE CHARSET FILENAME "
    "NAMES DISPOSITION SIZE), TRUNCATED #f or too-deep, too-many-parts, too-slow." },
  { "%mime-part-body", 3, 0, (scm_t_subr) mime_part_body,
    "(%mime-part-body MSG PARSE INDEX): the decoded content of part INDEX of PARSE, "
    "as a bytevector." },
};

void
gm_scm_init_mime (void)
{
  static gboolean done;
  if (!done)
    {
      g_mime_init ();
      parse_type = scm_make_foreign_object_type (scm_from_utf8_symbol ("mime-parse"),
                                                 scm_list_1 (scm_from_utf8_symbol ("parse")),
                                                 finalize_parse);
      scm_gc_protect_object (parse_type);
      cache = scm_gc_protect_object (scm_c_make_vector (2, SCM_BOOL_F));
      done = TRUE;
    }
  SCM doc = scm_from_utf8_symbol ("documentation");
  for (gsize i = 0; i < G_N_ELEMENTS (primitives); i++)
    {
      SCM proc = scm_c_define_gsubr (primitives[i].name, primitives[i].req, primitives[i].opt, 0,
                                     primitives[i].fn);
      scm_set_procedure_property_x (proc, doc, scm_from_utf8_string (primitives[i].doc));
      scm_c_export (primitives[i].name, NULL);
    }
}
