/* test-parse.c — smtp-parse.h: paths and ESMTP parameters (RFC 5321 §4.1.2,
 * §4.5.3.1; RFC 1870; RFC 6531 §3.3), domains and address literals
 * (RFC 5321 §4.1.3), decimals for SIZE= and BDAT.
 *
 * Valid and hostile inputs, every error reason the parser can give, and the
 * length limits exactly at and one past 64 (local part), 255 (domain) and 256
 * (whole path, brackets included). */
#include "config.h"
#include <glib.h>
#include <string.h>
#include "smtp-parse.h"

/* ---- Helpers ---------------------------------------------------------- */

/* A domain of exactly LEN octets made of labels of at most 63 'a's. */
static char *
make_domain (gsize len)
{
  GString *d = g_string_new (NULL);
  while (d->len < len)
    {
      if (d->len > 0)
        g_string_append_c (d, '.');
      gsize left = len - d->len;
      gsize label = MIN (left, (gsize) 63);
      /* Never leave one octet: it could only be a dot with an empty label. */
      if (left - label == 1)
        label--;
      for (gsize i = 0; i < label; i++)
        g_string_append_c (d, 'a' + (d->len % 26));
    }
  return g_string_free (d, FALSE);
}

static char *
repeat (char c, gsize n)
{
  char *s = g_malloc (n + 1);
  memset (s, c, n);
  s[n] = '\0';
  return s;
}

typedef struct
{
  GmPath path;
  GmParam params[GM_MAX_PARAMS];
  guint n_params;
  char *line;                   /* the parameters point into it */
} Parsed;

static void
parsed_free (Parsed *p)
{
  gm_path_clear (&p->path);
  g_free (p->line);
  g_free (p);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (Parsed, parsed_free)

/* Parse INPUT, which must succeed. */
static Parsed *
parse_ok (const char *input, GmPathFlags flags)
{
  Parsed *p = g_new0 (Parsed, 1);
  p->line = g_strdup (input);
  const char *reason = NULL;
  gboolean ok = gm_parse_path_and_params (p->line, flags, &p->path, p->params, &p->n_params,
                                          &reason, NULL);
  if (!ok)
    g_test_fail_printf ("parse of \"%s\" failed: %s", input, reason);
  else
    g_assert_nonnull (p->path.local);
  return p;
}

static void
assert_path (const char *input, GmPathFlags flags, const char *local, const char *domain,
             gboolean utf8)
{
  g_autoptr (Parsed) p = parse_ok (input, flags);
  g_assert_cmpstr (p->path.local, ==, local);
  g_assert_cmpstr (p->path.domain, ==, domain);
  g_assert_cmpint (p->path.utf8, ==, utf8);
  g_assert_cmpuint (p->n_params, ==, 0);
}

/* Parse INPUT, which must fail with REASON and leave PATH empty. */
static void
assert_fails (const char *input, GmPathFlags flags, const char *reason)
{
  g_autofree char *line = g_strdup (input);
  GmPath path;
  GmParam params[GM_MAX_PARAMS];
  guint n_params;
  const char *got = NULL;
  memset (&path, 0x5a, sizeof path);
  if (gm_parse_path_and_params (line, flags, &path, params, &n_params, &got, NULL))
    {
      g_autofree char *s = gm_path_to_string (&path);
      g_test_fail_printf ("\"%s\" was accepted as <%s>, expected \"%s\"", input, s, reason);
      gm_path_clear (&path);
      return;
    }
  g_assert_cmpstr (got, ==, reason);
  /* Nothing allocated on failure. */
  g_assert_null (path.local);
  g_assert_null (path.domain);
}

static void
assert_domain_ok (const char *s)
{
  const char *reason = NULL;
  if (!gm_valid_domain (s, strlen (s), &reason))
    g_test_fail_printf ("domain \"%s\" refused: %s", s, reason);
}

static void
assert_domain_fails (const char *s, const char *reason)
{
  const char *got = NULL;
  if (gm_valid_domain (s, strlen (s), &got))
    {
      g_test_fail_printf ("domain \"%s\" accepted, expected \"%s\"", s,
                          reason ? reason : "a refusal");
      return;
    }
  if (reason)
    g_assert_cmpstr (got, ==, reason);
  else
    g_assert_nonnull (got);
}

#define SND GM_PATH_SENDER
#define RCP GM_PATH_RECIPIENT

/* ---- gm_parse_path_and_params: paths ---------------------------------- */

static void
test_path_simple (void)
{
  assert_path ("<alice@example.test>", SND, "alice", "example.test", FALSE);
  assert_path ("<alice@example.test>", RCP, "alice", "example.test", FALSE);
  assert_path ("  <alice@example.test>", SND, "alice", "example.test", FALSE);
  assert_path ("<alice@example.test>  ", RCP, "alice", "example.test", FALSE);
  assert_path ("<a.b+tag@sub.example.test>", RCP, "a.b+tag", "sub.example.test", FALSE);
  assert_path ("<!#$%&'*+-/=?^_`{|}~@example.test>", RCP, "!#$%&'*+-/=?^_`{|}~", "example.test",
               FALSE);
  /* Case is kept: the local part is case-sensitive (RFC 5321 §2.4). */
  assert_path ("<Alice@Example.TEST>", RCP, "Alice", "Example.TEST", FALSE);

  g_autoptr (Parsed) p = parse_ok ("<alice@example.test>", SND);
  g_autofree char *s = gm_path_to_string (&p->path);
  g_assert_cmpstr (s, ==, "alice@example.test");
  g_autoptr (GString) out = g_string_new ("<");
  gm_path_append (out, &p->path);
  g_assert_cmpstr (out->str, ==, "<alice@example.test");
}

static void
test_path_null (void)
{
  assert_path ("<>", SND, "", NULL, FALSE);
  assert_path ("<> ", SND, "", NULL, FALSE);
  g_autoptr (Parsed) p = parse_ok ("<>", SND);
  g_autofree char *s = gm_path_to_string (&p->path);
  g_assert_cmpstr (s, ==, "");
  /* Not a forward-path. */
  assert_fails ("<>", RCP, "missing local part");
  assert_fails ("<>", 0, "missing local part");
}

static void
test_path_postmaster (void)
{
  assert_path ("<postmaster>", RCP, "postmaster", NULL, FALSE);
  assert_path ("<PostMaster>", RCP, "PostMaster", NULL, FALSE);
  assert_path ("<\"postmaster\">", RCP, "postmaster", NULL, FALSE);
  assert_path ("<postmaster@example.test>", RCP, "postmaster", "example.test", FALSE);
  g_autoptr (Parsed) p = parse_ok ("<postmaster>", RCP);
  g_autofree char *s = gm_path_to_string (&p->path);
  g_assert_cmpstr (s, ==, "postmaster");
  /* Only as a recipient, and only postmaster. */
  assert_fails ("<postmaster>", SND, "missing domain");
  assert_fails ("<postmistress>", RCP, "missing domain");
  assert_fails ("<postmaster.x>", RCP, "missing domain");
}

static void
test_path_source_route (void)
{
  /* RFC 5321 §4.1.2 A-d-l, Appendix C: accepted and ignored. */
  assert_path ("<@relay.example:alice@example.test>", SND, "alice", "example.test", FALSE);
  assert_path ("<@one.example,@two.example,@[192.0.2.1]:bob@example.test>", RCP, "bob",
               "example.test", FALSE);
  assert_fails ("<@one.example,two.example:bob@example.test>", RCP, "invalid source route");
  assert_fails ("<@one.example bob@example.test>", RCP, "invalid source route");
  assert_fails ("<@one.example>", RCP, "invalid source route");
  assert_fails ("<@example.test>", SND, "invalid source route");
  assert_fails ("<@:bob@example.test>", RCP, "empty domain");
  assert_fails ("<@>", RCP, "empty domain");
  assert_fails ("<@-relay.example:bob@example.test>", RCP,
                "domain label must start with a letter or digit");
  assert_fails ("<@one.example,@:bob@example.test>", RCP, "empty domain");
  assert_fails ("<@relay.example:>", RCP, "missing local part");
  assert_fails ("<@relay.example:@x.example>", RCP, "missing local part");
}

static void
test_path_quoted (void)
{
  /* Quotes around a dot-atom are dropped (canonical form). */
  assert_path ("<\"abc\"@example.test>", RCP, "abc", "example.test", FALSE);
  assert_path ("<\"a.b\"@example.test>", RCP, "a.b", "example.test", FALSE);
  assert_path ("<\"\\a\\b\\c\"@example.test>", RCP, "abc", "example.test", FALSE);
  /* Otherwise they stay, with \ and " re-escaped. */
  assert_path ("<\"a b\"@example.test>", RCP, "\"a b\"", "example.test", FALSE);
  assert_path ("<\"a\\ b\"@example.test>", RCP, "\"a b\"", "example.test", FALSE);
  assert_path ("<\"a..b\"@example.test>", RCP, "\"a..b\"", "example.test", FALSE);
  assert_path ("<\".a\"@example.test>", RCP, "\".a\"", "example.test", FALSE);
  assert_path ("<\"a\\\"b\"@example.test>", RCP, "\"a\\\"b\"", "example.test", FALSE);
  assert_path ("<\"a\\\\b\"@example.test>", RCP, "\"a\\\\b\"", "example.test", FALSE);
  assert_path ("<\"a@b\"@example.test>", RCP, "\"a@b\"", "example.test", FALSE);
  assert_path ("<\"\"@example.test>", RCP, "\"\"", "example.test", FALSE);

  /* qtextSMTP and quoted-pairSMTP are %d32-126 only. */
  assert_fails ("<\"abc@example.test>", RCP, "unterminated quoted local part");
  assert_fails ("<\"abc", RCP, "unterminated quoted local part");
  assert_fails ("<\"abc\\", RCP, "invalid character in quoted local part");
  assert_fails ("<\"a\tb\"@example.test>", RCP, "invalid character in quoted local part");
  assert_fails ("<\"a\x01\"@example.test>", RCP, "invalid character in quoted local part");
  assert_fails ("<\"a\x7f\"@example.test>", RCP, "invalid character in quoted local part");
  assert_fails ("<\"a\\\x01\"@example.test>", RCP, "invalid character in quoted local part");
  assert_fails ("<\"a\\\t\"@example.test>", RCP, "invalid character in quoted local part");
  assert_fails ("<\"ab\"c@example.test>", RCP, "invalid character in local part");
  assert_fails ("<\"ab\">", RCP, "missing domain");
}

static void
test_path_local_part_errors (void)
{
  assert_fails ("<.alice@example.test>", SND, "invalid local part");
  assert_fails ("<alice.@example.test>", SND, "invalid local part");
  assert_fails ("<al..ice@example.test>", SND, "invalid local part");
  assert_fails ("<.@example.test>", SND, "invalid local part");
  assert_fails ("<al ice@example.test>", SND, "invalid character in local part");
  assert_fails ("<al(ice)@example.test>", SND, "invalid character in local part");
  assert_fails ("<al,ice@example.test>", SND, "invalid character in local part");
  assert_fails ("<al\"ice@example.test>", SND, "invalid character in local part");
  assert_fails ("<al\\ice@example.test>", SND, "invalid character in local part");
  assert_fails ("<a\x01@example.test>", SND, "invalid character in local part");
  assert_fails ("<(comment)a@example.test>", SND, "missing local part");
  assert_fails ("< alice@example.test>", SND, "missing local part");
}

static void
test_path_structure_errors (void)
{
  assert_fails ("", SND, "address must be enclosed in <>");
  assert_fails ("   ", SND, "address must be enclosed in <>");
  assert_fails ("alice@example.test", SND, "address must be enclosed in <>");
  assert_fails ("\"alice\"<alice@example.test>", SND, "address must be enclosed in <>");
  assert_fails ("<alice>", SND, "missing domain");
  assert_fails ("<alice>", RCP, "missing domain");
  assert_fails ("<alice@>", SND, "empty domain");
  assert_fails ("<alice@example.test", SND, "missing closing >");
  assert_fails ("<alice@example.test SIZE=10", SND, "missing closing >");
  assert_fails ("<alice@exa mple.test>", SND, "missing closing >");
  assert_fails ("<alice@example.test,x>", SND, "missing closing >");
  assert_fails ("<alice@[192.0.2.1]x>", SND, "missing closing >");
  assert_fails ("<alice@example.test>x", SND, "expected a space after the address");
  assert_fails ("<alice@example.test>\tSIZE=1", SND, "expected a space after the address");
  assert_fails ("<>x", SND, "expected a space after the address");
  assert_fails ("<alice@example.test>>", SND, "expected a space after the address");
  assert_fails ("<alice@exa_mple.test>", SND, "invalid character in domain");
  assert_fails ("<alice@-example.test>", SND, "domain label must start with a letter or digit");
  assert_fails ("<alice@example-.test>", SND, "domain label ends with a hyphen");
  assert_fails ("<alice@example..test>", SND, "empty label in domain");
  assert_fails ("<alice@example.test.>", SND, "empty label in domain");
}

static void
test_path_address_literal (void)
{
  assert_path ("<alice@[192.0.2.1]>", SND, "alice", "[192.0.2.1]", FALSE);
  assert_path ("<alice@[IPv6:2001:db8::1]>", RCP, "alice", "[IPv6:2001:db8::1]", FALSE);
  assert_path ("<alice@[IPv6:::1]>", RCP, "alice", "[IPv6:::1]", FALSE);
  assert_path ("<alice@[x-tag:content]>", RCP, "alice", "[x-tag:content]", FALSE);
  /* dcontent includes '>': the literal runs to its ']'. */
  assert_path ("<alice@[x:a>b]>", RCP, "alice", "[x:a>b]", FALSE);
  assert_fails ("<alice@[192.0.2.1>", RCP, "unterminated address literal");
  assert_fails ("<alice@[192.0.2.256]>", RCP, "invalid IPv4 address literal");
  assert_fails ("<alice@[IPv6:::g]>", RCP, "invalid IPv6 address literal");
  assert_fails ("<alice@[::1]>", RCP, "invalid address literal");
  assert_fails ("<alice@[192.0.2.1 SIZE=1]>", RCP, "invalid IPv4 address literal");
}

static void
test_path_utf8 (void)
{
  /* RFC 6531: accepted and flagged; SMTPUTF8 is the caller's business. */
  assert_path ("<jösé@example.test>", SND, "jösé", "example.test", TRUE);
  assert_path ("<bob@exämple.test>", RCP, "bob", "exämple.test", TRUE);
  assert_path ("<\"jö sé\"@example.test>", RCP, "\"jö sé\"", "example.test", TRUE);
  assert_path ("<用户@例子.测试>", RCP, "用户", "例子.测试", TRUE);
  assert_path ("<bob@xn--exmple-cua.test>", RCP, "bob", "xn--exmple-cua.test", FALSE);
  assert_fails ("<\xff@example.test>", RCP, "local part is not valid UTF-8");
  assert_fails ("<\xc3@example.test>", RCP, "local part is not valid UTF-8");
  assert_fails ("<a\xc3\x28@example.test>", RCP, "local part is not valid UTF-8");
  assert_fails ("<\xc0\xaf@example.test>", RCP, "local part is not valid UTF-8");
  assert_fails ("<\xed\xa0\x80@example.test>", RCP, "local part is not valid UTF-8");
  assert_fails ("<\"\xff\"@example.test>", RCP, "local part is not valid UTF-8");
  assert_fails ("<bob@\xc3.test>", RCP, "domain is not valid UTF-8");
  assert_fails ("<bob@ex\xe4mple.test>", RCP, "domain is not valid UTF-8");
}

static void
test_path_length_limits (void)
{
  /* Local part: 64 octets (RFC 5321 §4.5.3.1.1). */
  g_autofree char *l64 = repeat ('l', 64), *l65 = repeat ('l', 65);
  g_autofree char *ok64 = g_strdup_printf ("<%s@example.test>", l64);
  g_autofree char *bad65 = g_strdup_printf ("<%s@example.test>", l65);
  assert_path (ok64, RCP, l64, "example.test", FALSE);
  assert_fails (bad65, RCP, "local part longer than 64 octets");
  /* Quoted: the quotes count. 62 + 2 = 64, 63 + 2 = 65. */
  g_autofree char *q62 = repeat ('q', 62), *q63 = repeat ('q', 63);
  g_autofree char *okq = g_strdup_printf ("<\"%s\"@example.test>", q62);
  g_autofree char *badq = g_strdup_printf ("<\"%s\"@example.test>", q63);
  assert_path (okq, RCP, q62, "example.test", FALSE);
  assert_fails (badq, RCP, "local part longer than 64 octets");
  /* A quoted pair is two octets of the local part. */
  g_autofree char *q60 = repeat ('q', 60), *q61 = repeat ('q', 61);
  g_autofree char *okqp = g_strdup_printf ("<\"%s\\ \"@example.test>", q60);
  g_autofree char *badqp = g_strdup_printf ("<\"%s\\ \"@example.test>", q61);
  g_autofree char *okqp_local = g_strdup_printf ("\"%s \"", q60);
  assert_path (okqp, RCP, okqp_local, "example.test", FALSE);
  assert_fails (badqp, RCP, "local part longer than 64 octets");

  /* Domain: 255 octets (§4.5.3.1.2); caught before the path limit. */
  g_autofree char *d256 = make_domain (256);
  g_assert_cmpuint (strlen (d256), ==, 256);
  g_autofree char *badd = g_strdup_printf ("<a@%s>", d256);
  assert_fails (badd, RCP, "domain longer than 255 octets");

  /* Path: 256 octets including "<" and ">" (§4.5.3.1.3). 64 + 1 + 189 + 2 = 256. */
  g_autofree char *d189 = make_domain (189), *d190 = make_domain (190);
  g_assert_cmpuint (strlen (d189), ==, 189);
  g_assert_cmpuint (strlen (d190), ==, 190);
  g_autofree char *p256 = g_strdup_printf ("<%s@%s>", l64, d189);
  g_autofree char *p257 = g_strdup_printf ("<%s@%s>", l64, d190);
  g_assert_cmpuint (strlen (p256), ==, 256);
  g_assert_cmpuint (strlen (p257), ==, 257);
  assert_path (p256, SND, l64, d189, FALSE);
  assert_fails (p257, SND, "address longer than 256 octets");
  /* The limit is on the path, not on what follows it. */
  g_autofree char *p256_params = g_strdup_printf ("%s SIZE=1000 BODY=8BITMIME", p256);
  g_autoptr (Parsed) p = parse_ok (p256_params, SND);
  g_assert_cmpuint (p->n_params, ==, 2);
  /* A domain of exactly 255 octets is valid, but no path can carry it. */
  g_autofree char *d255 = make_domain (255);
  g_autofree char *p_d255 = g_strdup_printf ("<a@%s>", d255);
  assert_fails (p_d255, RCP, "address longer than 256 octets");
}

/* ---- gm_parse_path_and_params: parameters ----------------------------- */

static void
test_params_valid (void)
{
  g_autoptr (Parsed) p = parse_ok ("<alice@example.test> SIZE=1000 BODY=8BITMIME SMTPUTF8", SND);
  g_assert_cmpuint (p->n_params, ==, 3);
  g_assert_cmpstr (p->params[0].keyword, ==, "SIZE");
  g_assert_cmpstr (p->params[0].value, ==, "1000");
  g_assert_cmpstr (p->params[1].keyword, ==, "BODY");
  g_assert_cmpstr (p->params[1].value, ==, "8BITMIME");
  g_assert_cmpstr (p->params[2].keyword, ==, "SMTPUTF8");
  g_assert_null (p->params[2].value);
  g_assert_cmpstr (p->path.local, ==, "alice");

  /* Several spaces between, trailing spaces, keywords with digits and
   * hyphens, values with every allowed ASCII character and UTF-8. */
  g_autoptr (Parsed) q = parse_ok ("<>   X-1=a   8BIT  ORCPT=rfc822;bob+2Bx@example.test "
                                   "V=!\"#$%&'()*+,-./:;<>?@[\\]^_`{|}~ U=ünï   ", SND);
  g_assert_cmpstr (q->path.local, ==, "");
  g_assert_cmpuint (q->n_params, ==, 5);
  g_assert_cmpstr (q->params[0].keyword, ==, "X-1");
  g_assert_cmpstr (q->params[0].value, ==, "a");
  g_assert_cmpstr (q->params[1].keyword, ==, "8BIT");
  g_assert_null (q->params[1].value);
  g_assert_cmpstr (q->params[2].keyword, ==, "ORCPT");
  g_assert_cmpstr (q->params[2].value, ==, "rfc822;bob+2Bx@example.test");
  g_assert_cmpstr (q->params[3].value, ==, "!\"#$%&'()*+,-./:;<>?@[\\]^_`{|}~");
  g_assert_cmpstr (q->params[4].value, ==, "ünï");
  /* Parameters do not make the path UTF-8. */
  g_assert_false (q->path.utf8);

  g_autoptr (Parsed) r = parse_ok ("<postmaster> NOTIFY=NEVER", RCP);
  g_assert_cmpuint (r->n_params, ==, 1);
  g_assert_cmpstr (r->params[0].keyword, ==, "NOTIFY");
}

static void
test_params_limit (void)
{
  GString *line = g_string_new ("<alice@example.test>");
  for (int i = 1; i <= GM_MAX_PARAMS; i++)
    g_string_append_printf (line, " P%d=%d", i, i);
  {
    g_autoptr (Parsed) p = parse_ok (line->str, SND);
    g_assert_cmpuint (p->n_params, ==, GM_MAX_PARAMS);
    g_assert_cmpstr (p->params[GM_MAX_PARAMS - 1].keyword, ==, "P16");
    g_assert_cmpstr (p->params[GM_MAX_PARAMS - 1].value, ==, "16");
  }
  g_string_append (line, " P17");
  assert_fails (line->str, SND, "too many parameters");
  g_string_free (line, TRUE);
}

static void
test_params_errors (void)
{
  /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
  assert_fails ("<alice@example.test> -SIZE=1", SND, "invalid parameter keyword");
  assert_fails ("<alice@example.test> =1", SND, "invalid parameter keyword");
  assert_fails ("<alice@example.test> _X", SND, "invalid parameter keyword");
  assert_fails ("<alice@example.test> A_B", SND, "invalid parameter keyword");
  assert_fails ("<alice@example.test> A.B=1", SND, "invalid parameter keyword");
  assert_fails ("<alice@example.test> SIZE=1 B:C", SND, "invalid parameter keyword");
  assert_fails ("<alice@example.test> ÜBER=1", SND, "invalid parameter keyword");
  assert_fails ("<alice@example.test> A\tB", SND, "invalid parameter keyword");
  /* esmtp-value = 1*(%d33-60 / %d62-126) */
  assert_fails ("<alice@example.test> SIZE=", SND, "empty parameter value");
  assert_fails ("<alice@example.test> SIZE= BODY=7BIT", SND, "empty parameter value");
  assert_fails ("<alice@example.test> A=b=c", SND, "invalid character in parameter value");
  assert_fails ("<alice@example.test> A==", SND, "invalid character in parameter value");
  assert_fails ("<alice@example.test> A=b\tc", SND, "invalid character in parameter value");
  assert_fails ("<alice@example.test> A=b\x01", SND, "invalid character in parameter value");
  assert_fails ("<alice@example.test> A=b\x7f", SND, "invalid character in parameter value");
  assert_fails ("<alice@example.test> A=\r", SND, "invalid character in parameter value");
  assert_fails ("<postmaster> NOTIFY=", RCP, "empty parameter value");
}

/* ---- gm_valid_domain ---------------------------------------------------- */

static void
test_domain_valid (void)
{
  assert_domain_ok ("example.test");
  assert_domain_ok ("a");
  assert_domain_ok ("A-b.C");
  assert_domain_ok ("a--b.example");
  assert_domain_ok ("3com.example");
  assert_domain_ok ("xn--bcher-kva.example");
  assert_domain_ok ("bücher.example");
  assert_domain_ok ("例子.测试");
  /* The length is honoured: what follows is not looked at. */
  const char *reason = NULL;
  g_assert_true (gm_valid_domain ("example.test>", 12, &reason));
  g_assert_true (gm_valid_domain ("[192.0.2.1]> SIZE=1", 11, &reason));
  g_assert_false (gm_valid_domain ("example.test", 0, &reason));
  g_assert_cmpstr (reason, ==, "empty domain");
}

static void
test_domain_labels (void)
{
  g_autofree char *l63 = repeat ('a', 63), *l64 = repeat ('a', 64);
  g_autofree char *d63 = g_strdup_printf ("%s.example", l63);
  g_autofree char *d64 = g_strdup_printf ("%s.example", l64);
  g_autofree char *last64 = g_strdup_printf ("example.%s", l64);
  assert_domain_ok (l63);
  assert_domain_ok (d63);
  assert_domain_fails (l64, "domain label longer than 63 octets");
  assert_domain_fails (d64, "domain label longer than 63 octets");
  assert_domain_fails (last64, "domain label longer than 63 octets");
  /* Labels of UTF-8 count octets: 21 three-octet characters are 63. */
  GString *u = g_string_new (NULL);
  for (int i = 0; i < 21; i++)
    g_string_append (u, "例");
  assert_domain_ok (u->str);
  g_string_append (u, "a");
  assert_domain_fails (u->str, "domain label longer than 63 octets");
  g_string_free (u, TRUE);

  assert_domain_fails ("", "empty domain");
  assert_domain_fails (".", "empty label in domain");
  assert_domain_fails (".example", "empty label in domain");
  assert_domain_fails ("example.", "empty label in domain");
  assert_domain_fails ("exa..mple", "empty label in domain");
  assert_domain_fails ("-example.test", "domain label must start with a letter or digit");
  assert_domain_fails ("example.-test", "domain label must start with a letter or digit");
  assert_domain_fails ("example-.test", "domain label ends with a hyphen");
  assert_domain_fails ("example.test-", "domain label ends with a hyphen");
  assert_domain_fails ("a-", "domain label ends with a hyphen");
  assert_domain_fails ("exa_mple.test", "invalid character in domain");
  assert_domain_fails ("exa mple.test", "invalid character in domain");
  assert_domain_fails ("exa/mple.test", "invalid character in domain");
  assert_domain_fails ("example.test>", "invalid character in domain");
  assert_domain_fails ("_dmarc.example", "domain label must start with a letter or digit");
}

static void
test_domain_length (void)
{
  g_autofree char *d255 = make_domain (255), *d256 = make_domain (256);
  g_assert_cmpuint (strlen (d255), ==, 255);
  g_assert_cmpuint (strlen (d256), ==, 256);
  assert_domain_ok (d255);
  assert_domain_fails (d256, "domain longer than 255 octets");
  /* Address literals too (found by fuzz-address). */
  g_autofree char *l255 = g_strdup_printf ("[x-tag:%0247d]", 0);
  g_autofree char *l256 = g_strdup_printf ("[x-tag:%0248d]", 0);
  g_assert_cmpuint (strlen (l255), ==, 255);
  assert_domain_ok (l255);
  assert_domain_fails (l256, "domain longer than 255 octets");
}

static void
test_domain_utf8 (void)
{
  assert_domain_fails ("\xff.example", "domain is not valid UTF-8");
  assert_domain_fails ("b\xc3.example", "domain is not valid UTF-8");
  assert_domain_fails ("\xc0\xae.example", "domain is not valid UTF-8");
  assert_domain_fails ("\xed\xa0\x80.example", "domain is not valid UTF-8");
  assert_domain_fails ("\xf4\x90\x80\x80.example", "domain is not valid UTF-8");
  assert_domain_fails ("ex\xe4mple.test", "domain is not valid UTF-8");
}

static void
test_domain_literal_v4 (void)
{
  assert_domain_ok ("[192.0.2.1]");
  assert_domain_ok ("[127.0.0.1]");
  assert_domain_ok ("[0.0.0.0]");
  assert_domain_ok ("[255.255.255.255]");
  assert_domain_fails ("[256.0.0.1]", "invalid IPv4 address literal");
  assert_domain_fails ("[192.0.2]", "invalid IPv4 address literal");
  assert_domain_fails ("[192.0.2.1.5]", "invalid IPv4 address literal");
  assert_domain_fails ("[192.0.2.1 ]", "invalid IPv4 address literal");
  assert_domain_fails ("[1]", "invalid IPv4 address literal");
  assert_domain_fails ("[192.0.2.1", "unterminated address literal");
  assert_domain_fails ("[", "unterminated address literal");
  assert_domain_fails ("[]", NULL);
}

static void
test_domain_literal_v6 (void)
{
  assert_domain_ok ("[IPv6:::1]");
  assert_domain_ok ("[IPv6:2001:db8::1]");
  assert_domain_ok ("[ipv6:2001:DB8::1]");
  assert_domain_ok ("[IPv6:2001:db8:0:0:0:0:0:1]");
  assert_domain_ok ("[IPv6:::ffff:192.0.2.1]");
  assert_domain_fails ("[IPv6:]", "invalid IPv6 address literal");
  assert_domain_fails ("[IPv6:::g]", "invalid IPv6 address literal");
  assert_domain_fails ("[IPv6:192.0.2.1]", "invalid IPv6 address literal");
  assert_domain_fails ("[IPv6:1:2:3:4:5:6:7:8:9]", "invalid IPv6 address literal");
  assert_domain_fails ("[IPv6:2001:db8::1%eth0]", "invalid IPv6 address literal");
  /* Without the tag it is not an IPv6 literal (RFC 5321 §4.1.3). */
  assert_domain_fails ("[::1]", "invalid address literal");
  assert_domain_fails ("[2001:db8::1]", NULL);
}

static void
test_domain_literal_general (void)
{
  /* General-address-literal = Standardized-tag ":" 1*dcontent */
  assert_domain_ok ("[x-tag:content]");
  assert_domain_ok ("[tag:!\"#$%&'()*+,-./:;<=>?@^_`{|}~]");
  assert_domain_ok ("[X400:c=gb;a=x;p=y]");
  assert_domain_fails ("[tag]", "invalid address literal");
  assert_domain_fails ("[tag:]", "invalid address literal");
  assert_domain_fails ("[:content]", "invalid address literal");
  assert_domain_fails ("[ta_g:content]", "invalid address literal tag");
  assert_domain_fails ("[ta g:content]", "invalid address literal tag");
  assert_domain_fails ("[tag:con tent]", "invalid character in address literal");
  assert_domain_fails ("[tag:con[tent]", "invalid character in address literal");
  assert_domain_fails ("[tag:con\\tent]", "invalid character in address literal");
  assert_domain_fails ("[tag:con]tent]", "invalid character in address literal");
  assert_domain_fails ("[tag:conté]", "invalid character in address literal");
  assert_domain_fails ("[tag:con\x7ftent]", "invalid character in address literal");
}

/* ---- gm_parse_decimal --------------------------------------------------- */

static void
test_decimal (void)
{
  guint64 v = 12345;
  g_assert_false (gm_parse_decimal ("", &v));
  g_assert_true (gm_parse_decimal ("0", &v));
  g_assert_cmpuint (v, ==, 0);
  g_assert_true (gm_parse_decimal ("42", &v));
  g_assert_cmpuint (v, ==, 42);
  g_assert_true (gm_parse_decimal ("007", &v));
  g_assert_cmpuint (v, ==, 7);
  g_assert_true (gm_parse_decimal ("10240000", &v));
  g_assert_cmpuint (v, ==, 10240000);
  /* 19 digits: every value fits in 64 bits. */
  g_assert_true (gm_parse_decimal ("9999999999999999999", &v));
  g_assert_cmpuint (v, ==, G_GUINT64_CONSTANT (9999999999999999999));
  g_assert_true (gm_parse_decimal ("0000000000000000001", &v));
  g_assert_cmpuint (v, ==, 1);
  /* 21 digits: more than the header's "at most 20". */
  g_assert_false (gm_parse_decimal ("000000000000000000001", &v));
  g_assert_false (gm_parse_decimal ("100000000000000000000", &v));
}

static void
test_decimal_not_digits (void)
{
  guint64 v;
  const char *bad[] = { "a", "12a", "a12", " 12", "12 ", "-1", "+1", "1.0", "1,000", "0x10",
                        "1e3", "١٢", "12\n", "\t1" };
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    if (gm_parse_decimal (bad[i], &v))
      g_test_fail_printf ("\"%s\" was taken as the decimal %" G_GUINT64_FORMAT, bad[i], v);
}

static void
test_decimal_twenty_digits (void)
{
  /* smtp-parse.h: "all digits (at most 20)"; RFC 1870: size-value =
   * 1*20DIGIT. 20-digit values within 64 bits have a value. */
  guint64 v = 0;
  g_assert_true (gm_parse_decimal ("18446744073709551615", &v));
  g_assert_cmpuint (v, ==, G_MAXUINT64);
  g_assert_true (gm_parse_decimal ("00000000000000000042", &v));
  g_assert_cmpuint (v, ==, 42);
  g_assert_true (gm_parse_decimal ("10000000000000000000", &v));
  g_assert_cmpuint (v, ==, G_GUINT64_CONSTANT (10000000000000000000));
}

/* The parser stops at the line's NUL: the session cuts a line there, with
 * the next pipelined command right behind it (found by fuzz-address). */
static void
test_path_stops_at_nul (void)
{
  char line[] = "<alice\0@example.test>";
  GmPath path;
  GmParam params[GM_MAX_PARAMS];
  guint n_params;
  const char *reason = NULL;
  g_assert_false (gm_parse_path_and_params (line, RCP, &path, params, &n_params, &reason, NULL));
  g_assert_cmpstr (reason, ==, "invalid character in local part");
}

static void
test_decimal_no_wrap (void)
{
  /* Past 2^64 - 1 the value must not wrap round to a small number (which
   * would turn SIZE=18446744073709552639 into SIZE=1023): either refused or
   * held at the maximum. */
  const char *big[] = { "18446744073709551616", "18446744073709552639", "99999999999999999999" };
  for (gsize i = 0; i < G_N_ELEMENTS (big); i++)
    {
      guint64 v = 0;
      if (gm_parse_decimal (big[i], &v))
        g_assert_cmpuint (v, ==, G_MAXUINT64);
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* A failed check marks its test failed and the run goes on. */
  g_test_set_nonfatal_assertions ();

  g_test_add_func ("/parse/path/simple", test_path_simple);
  g_test_add_func ("/parse/path/null", test_path_null);
  g_test_add_func ("/parse/path/postmaster", test_path_postmaster);
  g_test_add_func ("/parse/path/source-route", test_path_source_route);
  g_test_add_func ("/parse/path/quoted", test_path_quoted);
  g_test_add_func ("/parse/path/local-part-errors", test_path_local_part_errors);
  g_test_add_func ("/parse/path/structure-errors", test_path_structure_errors);
  g_test_add_func ("/parse/path/address-literal", test_path_address_literal);
  g_test_add_func ("/parse/path/utf8", test_path_utf8);
  g_test_add_func ("/parse/path/length-limits", test_path_length_limits);
  g_test_add_func ("/parse/path/stops-at-nul", test_path_stops_at_nul);
  g_test_add_func ("/parse/params/valid", test_params_valid);
  g_test_add_func ("/parse/params/limit", test_params_limit);
  g_test_add_func ("/parse/params/errors", test_params_errors);
  g_test_add_func ("/parse/domain/valid", test_domain_valid);
  g_test_add_func ("/parse/domain/labels", test_domain_labels);
  g_test_add_func ("/parse/domain/length", test_domain_length);
  g_test_add_func ("/parse/domain/utf8", test_domain_utf8);
  g_test_add_func ("/parse/domain/literal-ipv4", test_domain_literal_v4);
  g_test_add_func ("/parse/domain/literal-ipv6", test_domain_literal_v6);
  g_test_add_func ("/parse/domain/literal-general", test_domain_literal_general);
  g_test_add_func ("/parse/decimal/basic", test_decimal);
  g_test_add_func ("/parse/decimal/not-digits", test_decimal_not_digits);
  g_test_add_func ("/parse/decimal/twenty-digits", test_decimal_twenty_digits);
  g_test_add_func ("/parse/decimal/no-wrap", test_decimal_no_wrap);

  return g_test_run ();
}
