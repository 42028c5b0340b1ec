/* diag.c: diagnostics. "file:line:col: error: message", then the source line
 * and a caret line (^ under the column, ~ along the rest of the range on that
 * line), the way compilers print them. Owns the error cap (Diag.max_errors:
 * further errors are counted, not printed, with one "too many errors" line).
 *
 * Columns are 1-based byte offsets. The printed line keeps tabs (the caret
 * line copies them so carets line up) and valid UTF-8; any other
 * non-printable byte shows as '?'. A long line is shown as a window of about
 * 100 characters around the column, cut with "...". */
#include <stdarg.h>
#include <string.h>

#include "frontend.h"

enum { WINDOW = 100 };

void fe_diag_init(Diag *d, const Source *src) {
  memset(d, 0, sizeof *d);
  d->src = src;
  d->max_errors = 20;
  d->out = stderr;
}

/* Length of the valid UTF-8 sequence at s (2..4), or 1 for any single byte. */
static size_t seq_len(const unsigned char *s, size_t n, bool *valid) {
  if (s[0] < 0x80) {
    *valid = s[0] == '\t' || (s[0] >= 0x20 && s[0] < 0x7f);
    return 1;
  }
  int len = mc_utf8_len(s, n);
  *valid = len > 0;
  return len > 0 ? (size_t)len : 1;
}

/* Prints line `loc.line` of the source and the caret line under it. */
static void show_source(const Diag *d, FILE *out, Loc loc) {
  const Source *src = loc.src ? loc.src : d->src;
  if (!src || !src->text || loc.line <= 0 || loc.col <= 0) return;
  const char *text = src->text, *end = text + src->len;
  const char *p = text;
  for (int l = 1; l < loc.line; l++) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) return; /* past the last line */
    p = nl + 1;
  }
  const char *nl = memchr(p, '\n', (size_t)(end - p));
  size_t n = (size_t)((nl ? nl : end) - p);
  if (n && p[n - 1] == '\r') n--;
  const unsigned char *line = (const unsigned char *)p;

  size_t col = (size_t)loc.col - 1; /* byte offset of the caret */
  if (col > n) col = n;
  size_t last = col; /* byte offset of the last '~' */
  if (loc.end_line == loc.line && loc.end_col > loc.col)
    last = (size_t)loc.end_col - 1;
  else if (loc.end_line > loc.line && n > 0)
    last = n - 1;
  if (last >= n) last = n ? n - 1 : 0;
  if (last < col) last = col;

  /* window [lo, hi) around the caret, on UTF-8 boundaries */
  size_t lo = 0, hi = n;
  if (n > WINDOW + 20) {
    lo = col > WINDOW / 2 ? col - WINDOW / 2 : 0;
    hi = MC_MIN(n, lo + WINDOW);
    if (hi - lo < WINDOW) lo = hi > WINDOW ? hi - WINDOW : 0;
    while (lo > 0 && lo < n && (line[lo] & 0xC0) == 0x80)
      lo++;
    while (hi < n && (line[hi] & 0xC0) == 0x80)
      hi++;
    if (lo > col) lo = col;
  }
  if (last >= hi) last = hi ? hi - 1 : 0;
  if (last < col) last = col;

  if (lo > 0) fputs("...", out);
  for (size_t i = lo; i < hi;) {
    bool valid;
    size_t k = seq_len(line + i, hi - i, &valid);
    if (valid)
      fwrite(line + i, 1, k, out);
    else
      fputc('?', out);
    i += k;
  }
  if (hi < n) fputs("...", out);
  fputc('\n', out);

  if (lo > 0) fputs("   ", out);
  for (size_t i = lo; i < hi && i <= last;) {
    bool valid;
    size_t k = seq_len(line + i, hi - i, &valid);
    char c = i < col ? (line[i] == '\t' ? '\t' : ' ') : i == col ? '^' : '~';
    fputc(c, out);
    i += k;
  }
  if (col >= hi) fputc('^', out); /* caret just past the end of the line */
  fputc('\n', out);
}

static void emit(Diag *d, const char *kind, Loc loc, const char *fmt, va_list ap) {
  FILE *out = d->out ? d->out : stderr;
  const Source *src = loc.src ? loc.src : d->src;
  const char *path = src && src->path ? src->path : "<input>";
  if (loc.line > 0)
    fprintf(out, "%s:%d:%d: %s: ", path, loc.line, loc.col, kind);
  else
    fprintf(out, "%s: %s: ", path, kind);
  vfprintf(out, fmt, ap);
  fputc('\n', out);
  show_source(d, out, loc);
}

/* max_errors <= 0 means no cap. */
static bool capped(const Diag *d) {
  return d->max_errors > 0 && d->errors > d->max_errors;
}

void fe_error(Diag *d, Loc loc, const char *fmt, ...) {
  d->errors++;
  if (loc.src && loc.src->cmdline) d->cmdline_errors++;
  if (capped(d)) {
    if (d->errors == d->max_errors + 1) {
      const char *path = d->src && d->src->path ? d->src->path : "<input>";
      fprintf(d->out ? d->out : stderr,
              "%s: note: too many errors (limit %d); further errors are not shown\n", path,
              d->max_errors);
    }
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  emit(d, "error", loc, fmt, ap);
  va_end(ap);
}

/* A note belongs to the error before it: shown only if that one was. */
void fe_note(Diag *d, Loc loc, const char *fmt, ...) {
  if (capped(d)) return;
  va_list ap;
  va_start(ap, fmt);
  emit(d, "note", loc, fmt, ap);
  va_end(ap);
}
