/* standalone.c — replay fuzz inputs without libFuzzer.
 *
 * Linked with one target instead of libFuzzer's main: runs
 * LLVMFuzzerTestOneInput once on every file given, and on every file of every
 * directory given (sorted, not recursive; names starting with "." or ending
 * in ".md" are skipped). `make check` runs each target on its corpus this way,
 * built with the project's compiler (and with ASan and UBSan under
 * ./configure --enable-sanitizers).
 *
 * A crash or a failed check aborts: the last "# input" line of the output
 * names the input. Otherwise prints "replayed N inputs" and exits 0. */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "fuzz.h"

/* Targets that need no set-up do not define it. */
int LLVMFuzzerInitialize (int *argc, char ***argv) __attribute__ ((weak));

static guint replayed;

static void
replay_file (const char *path)
{
  g_autofree char *data = NULL;
  gsize len;
  g_autoptr (GError) error = NULL;
  if (!g_file_get_contents (path, &data, &len, &error))
    {
      fprintf (stderr, "%s\n", error->message);
      exit (2);
    }
  printf ("# input %s (%zu bytes)\n", path, len);
  fflush (stdout);
  /* A copy of exactly LEN bytes, so that ASan sees reads past the end. */
  g_autofree uint8_t *copy = g_memdup2 (data, len);
  LLVMFuzzerTestOneInput (copy, len);
  replayed++;
}

static int
compare_names (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

static void
replay_path (const char *path)
{
  if (!g_file_test (path, G_FILE_TEST_IS_DIR))
    {
      replay_file (path);
      return;
    }
  g_autoptr (GError) error = NULL;
  g_autoptr (GDir) dir = g_dir_open (path, 0, &error);
  if (!dir)
    {
      fprintf (stderr, "%s\n", error->message);
      exit (2);
    }
  g_autoptr (GPtrArray) names = g_ptr_array_new_with_free_func (g_free);
  const char *name;
  while ((name = g_dir_read_name (dir)))
    if (name[0] != '.' && !g_str_has_suffix (name, ".md"))
      g_ptr_array_add (names, g_strdup (name));
  g_ptr_array_sort (names, compare_names);
  for (guint i = 0; i < names->len; i++)
    {
      g_autofree char *child = g_build_filename (path, g_ptr_array_index (names, i), NULL);
      if (!g_file_test (child, G_FILE_TEST_IS_DIR))
        replay_file (child);
    }
}

int
main (int argc, char **argv)
{
  if (argc < 2)
    {
      fprintf (stderr, "usage: %s FILE|DIRECTORY...\n", argv[0]);
      return 2;
    }
  if (LLVMFuzzerInitialize)
    LLVMFuzzerInitialize (&argc, &argv);
  for (int i = 1; i < argc; i++)
    replay_path (argv[i]);
  printf ("replayed %u inputs\n", replayed);
  return 0;
}
