/* shardclaim._valid: which lines are certainly records, decided in C without building any object.
 *
 * The optional fast path of the validator (shardclaim.dataset.validate; the rule is
 * shardclaim.dataset.records.loads_exact). It may only be too careful, never too lenient: a line it
 * accepts is a record under the rule; a line it does not accept is "unsure" and goes to the rule, which
 * decides and words the error. So it accepts strict RFC 8259 JSON in strict UTF-8 and leaves to the
 * rule everything near an edge of the rule:
 *
 *   - an integer of 19 digits or more (the rule counts those beyond 64 bits; 18 digits always fit);
 *   - a number with a fraction or an exponent whose magnitude is not within 1e-300..1e300 (the rule
 *     refuses one beyond a double's range), or whose exponent has more than three digits;
 *   - more than 1,000 levels of nesting (the rule refuses more than 1,024);
 *   - a \u escape of a surrogate that is not a high one followed at once by a low one;
 *   - a byte order mark, or any other byte the grammar does not allow where it stands.
 *
 * One line is whatever lies before a newline (or before the end of the range, for a last line without
 * one); JSON whitespace inside it is space, tab and carriage return. A blank line (only those) is not a
 * record; first_unsure() skips it, as the validator does.
 *
 * How it is fast: one pass, no recursion, a place in the code per grammar state (so a value's type is
 * decided once, and an object and an array each have their own branches to learn); the newline that
 * ends a line is a sentinel every loop stops at, so most steps check no bound; string bytes pass 16 at a
 * time with SSE2, and UTF-8 in them 16 at a time with SSSE3 where the CPU has it; a one-digit array
 * element is taken in one step. On these machines one call over a block checks the benchmark's 470-byte
 * records at 1.9-2.2 M lines (0.9-1.0 GB) a second per core, 1.26-1.41x simdjson called once a line from
 * Python, and 10 KB records at 0.9-1.2 GB/s, 2.0x (bench/validate_speed.py, 2026-11-30). A
 * simdjson-style two-stage walk (bitmasks of 64 bytes, then the tokens) was built and measured 30 %
 * slower on these records: they hold about one token per four bytes, and it is the tokens that cost.
 *
 * Guarantees: the range is checked before a byte is read (ValueError); nothing outside it is read (a
 * last line without a newline is checked on a copy with one appended); within it, a line's scans stop
 * at its newline, except that the 16-byte string step and a literal's compare may look up to 15 and 4
 * bytes on, bounded by the range; the buffer is released on every path; the GIL is released for the
 * walk. The caller's part: the buffer must not change during the call. The newline sentinel is read
 * without the GIL, so a newline overwritten meanwhile (by another thread, or by a writer to a shared
 * mapping of a file) could let a scan run past the range. The builder passes private buffers (the
 * blocks it reads into). Background validators walk their input mapped (shardclaim/dataset/validate.py):
 * a file written to under the walk can then make a validator crash (a hostile pass showed it with a page
 * flipped under the walk), or misjudge a line; either way the file's stamp has changed, and the build
 * reports the input as changed while it was read and publishes nothing (a validator that dies of it
 * leaves no core dump).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) && defined(__GNUC__)
#define HAVE_SSE2 1
#include <emmintrin.h>
#else
#define HAVE_SSE2 0
#endif

/* SSSE3 is used by one function compiled for it and chosen at import where the CPU has it. */
#if HAVE_SSE2 && (defined(__x86_64__) || defined(__i386__))
#define HAVE_SSSE3 1
#include <tmmintrin.h>
#define SSSE3 __attribute__((target("ssse3")))
#else
#define HAVE_SSSE3 0
#endif

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

#define MAX_DEPTH 1000

/* Byte classes inside a string: 0 passes as it is. A newline is CONTROL: it ends every string scan. */
enum { PLAIN = 0, QUOTE, BACKSLASH, CONTROL, HIGH };

static unsigned char string_class[256];
static unsigned char is_ws[256]; /* JSON whitespace but the newline: space, tab, carriage return */

static void
init_tables(void)
{
    for (int c = 0; c < 256; c++) {
        string_class[c] = c < 0x20 ? CONTROL : c >= 0x80 ? HIGH : PLAIN;
    }
    string_class['"'] = QUOTE;
    string_class['\\'] = BACKSLASH;
    is_ws[' '] = is_ws['\t'] = is_ws['\r'] = 1;
}

#define SKIP_WS(p)                                                                                            \
    while (is_ws[*(p)]) {                                                                                     \
        (p)++;                                                                                                \
    }

static inline int
is_digit(unsigned char c)
{
    return (unsigned)(c - '0') < 10;
}

static inline int
hex4(const unsigned char *p, const unsigned char *e, unsigned *out)
{
    unsigned v = 0;
    if (e - p < 4) {
        return 0;
    }
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        unsigned d;
        if (is_digit(c)) {
            d = c - '0';
        }
        else if (c >= 'a' && c <= 'f') {
            d = c - 'a' + 10;
        }
        else if (c >= 'A' && c <= 'F') {
            d = c - 'A' + 10;
        }
        else {
            return 0;
        }
        v = v << 4 | d;
    }
    *out = v;
    return 1;
}

/* One UTF-8 sequence starting at p (p[0] >= 0x80), as RFC 3629 allows it: no overlong form, no
 * surrogate, nothing past U+10FFFF. The position after it, or NULL. */
static inline const unsigned char *
utf8_seq(const unsigned char *p, const unsigned char *e)
{
    unsigned char c = p[0];
    unsigned char lo = 0x80, hi = 0xBF;
    int n;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 1;
    }
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 2;
        if (c == 0xE0) {
            lo = 0xA0;
        }
        else if (c == 0xED) {
            hi = 0x9F;
        }
    }
    else if (c >= 0xF0 && c <= 0xF4) {
        n = 3;
        if (c == 0xF0) {
            lo = 0x90;
        }
        else if (c == 0xF4) {
            hi = 0x8F;
        }
    }
    else {
        return NULL;
    }
    if (e - p <= n || p[1] < lo || p[1] > hi) {
        return NULL;
    }
    for (int i = 2; i <= n; i++) {
        if (p[i] < 0x80 || p[i] > 0xBF) {
            return NULL;
        }
    }
    return p + n + 1;
}

/* The first byte at or after p that is not PLAIN inside a string (at the latest the newline at e).
 * 16 bytes a step with SSE2 (every x86-64 has it) while 16 are left before e: a signed compare below
 * 0x20 catches both the control bytes and every byte of 0x80 or more, two equality compares the quote
 * and the backslash. */
static inline const unsigned char *
plain_end(const unsigned char *p, const unsigned char *e)
{
#if HAVE_SSE2
    const __m128i space = _mm_set1_epi8(0x20), quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    while (e - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        __m128i special =
            _mm_or_si128(_mm_cmplt_epi8(x, space), _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)));
        int mask = _mm_movemask_epi8(special);
        if (mask != 0) {
            return p + __builtin_ctz((unsigned)mask);
        }
        p += 16;
    }
#else
    (void)e;
#endif
    while (string_class[*p] == PLAIN) {
        p++;
    }
    return p;
}

/* A run of string bytes that holds UTF-8, from p (a byte of 0x80 or more): the first byte at or after
 * p that is a quote, a backslash or a control byte (at the latest the newline at e), every byte before
 * it being PLAIN or part of a whole, valid UTF-8 sequence; NULL if one is not. This is the portable
 * version, one sequence a step; utf8_run_ssse3 below takes 16 bytes a step. */
static const unsigned char *
utf8_run_scalar(const unsigned char *p, const unsigned char *e)
{
    for (;;) {
        p = plain_end(p, e);
        if (string_class[*p] != HIGH) {
            return p;
        }
        if ((p = utf8_seq(p, e)) == NULL) {
            return NULL;
        }
    }
}

#if HAVE_SSSE3
/* The same with SSSE3, which nearly every x86-64 in service has (it is checked at import: see
 * PyInit__valid). The UTF-8 check is Keiser and Lemire's ("Validating UTF-8 in less than one
 * instruction per byte", 2021, as simdjson and simdutf use it): three 16-entry tables looked up by the
 * nibbles of each byte and of the one before say which pairs of bytes cannot stand together (a
 * continuation without a lead, a lead without its continuations, an overlong form, a surrogate, a code
 * point past U+10FFFF); the bytes two and three back say where a third or fourth byte must follow. The
 * block that holds the run's end has the bytes from that end on set to zero: a sequence cut by the
 * quote is then an error like one cut by any other ASCII byte, and what follows (the next line, say)
 * cannot make this one unsure. On the benchmark's records, 4 % of whose bytes
 * are not ASCII, these bytes took a third of the walk one sequence at a time (bench/validate_speed.py). */
#define TOO_SHORT 0x01 /* a lead then no continuation */
#define TOO_LONG 0x02  /* a continuation after ASCII */
#define OVERLONG_3 0x04
#define TOO_LARGE 0x08
#define SURROGATE 0x10
#define OVERLONG_2 0x20
#define TOO_LARGE_1000 0x40
#define OVERLONG_4 0x40
#define TWO_CONTS 0x80 /* two continuations: allowed only where a third or fourth byte must come */
#define CARRY (TOO_SHORT | TOO_LONG | TWO_CONTS)

static SSSE3 inline __m128i
utf8_errors(__m128i input, __m128i prev_input)
{
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i byte_1_high =
        _mm_setr_epi8(TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, (char)TWO_CONTS,
                      (char)TWO_CONTS, (char)TWO_CONTS, (char)TWO_CONTS, TOO_SHORT | OVERLONG_2, TOO_SHORT,
                      TOO_SHORT | OVERLONG_3 | SURROGATE, TOO_SHORT | TOO_LARGE | TOO_LARGE_1000 | OVERLONG_4);
    const __m128i byte_1_low = _mm_setr_epi8(
        (char)(CARRY | OVERLONG_3 | OVERLONG_2 | OVERLONG_4), (char)(CARRY | OVERLONG_2), (char)CARRY, (char)CARRY,
        (char)(CARRY | TOO_LARGE), (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), (char)(CARRY | TOO_LARGE | TOO_LARGE_1000),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), (char)(CARRY | TOO_LARGE | TOO_LARGE_1000 | SURROGATE),
        (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), (char)(CARRY | TOO_LARGE | TOO_LARGE_1000));
    const __m128i byte_2_high = _mm_setr_epi8(
        TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT,
        (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE_1000 | OVERLONG_4),
        (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE),
        (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE),
        (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE), TOO_SHORT, TOO_SHORT, TOO_SHORT,
        TOO_SHORT);
    __m128i prev1 = _mm_alignr_epi8(input, prev_input, 15);
    __m128i special = _mm_and_si128(
        _mm_and_si128(_mm_shuffle_epi8(byte_1_high, _mm_and_si128(_mm_srli_epi16(prev1, 4), nibble)),
                      _mm_shuffle_epi8(byte_1_low, _mm_and_si128(prev1, nibble))),
        _mm_shuffle_epi8(byte_2_high, _mm_and_si128(_mm_srli_epi16(input, 4), nibble)));
    /* 0x80 where the byte two back leads three or four bytes, or three back leads four */
    __m128i third = _mm_subs_epu8(_mm_alignr_epi8(input, prev_input, 14), _mm_set1_epi8((char)(0xE0 - 0x80)));
    __m128i fourth = _mm_subs_epu8(_mm_alignr_epi8(input, prev_input, 13), _mm_set1_epi8((char)(0xF0 - 0x80)));
    __m128i must_continue = _mm_and_si128(_mm_or_si128(third, fourth), _mm_set1_epi8((char)0x80));
    return _mm_xor_si128(must_continue, special);
}

static SSSE3 const unsigned char *
utf8_run_ssse3(const unsigned char *p, const unsigned char *e)
{
    static const unsigned char keep[32] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                           0xFF, 0xFF, 0xFF, 0xFF, 0xFF}; /* 16 x 0xFF, 16 x 0 */
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), control = _mm_set1_epi8(0x1F);
    /* a lead in the last three bytes that needs more bytes than are left in its block */
    const __m128i incomplete_at =
        _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, (char)(0xF0 - 1), (char)(0xE0 - 1),
                      (char)(0xC0 - 1));
    __m128i prev = _mm_setzero_si128(), errors = _mm_setzero_si128(), incomplete = _mm_setzero_si128();
    while (e - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        __m128i stop = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(x, control), x),
                                    _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)));
        int mask = _mm_movemask_epi8(stop);
        if (mask != 0) {
            int k = __builtin_ctz((unsigned)mask);
            x = _mm_and_si128(x, _mm_loadu_si128((const __m128i *)(keep + 16 - k)));
            errors = _mm_or_si128(errors, utf8_errors(x, prev));
            return _mm_movemask_epi8(_mm_cmpeq_epi8(errors, _mm_setzero_si128())) == 0xFFFF ? p + k : NULL;
        }
        if (_mm_movemask_epi8(x) == 0) { /* all ASCII: only a sequence cut at the block before is wrong */
            errors = _mm_or_si128(errors, incomplete);
            incomplete = _mm_setzero_si128();
        }
        else {
            errors = _mm_or_si128(errors, utf8_errors(x, prev));
            incomplete = _mm_subs_epu8(x, incomplete_at);
        }
        prev = x;
        p += 16;
    }
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(errors, _mm_setzero_si128())) != 0xFFFF) {
        return NULL;
    }
    /* fewer than 16 bytes left: step back to a sequence the last block cut, and go on one at a time */
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(incomplete, _mm_setzero_si128())) != 0xFFFF) {
        int back = 1;
        while (p[-back] < 0xC0) {
            back++;
        }
        p -= back;
    }
    return utf8_run_scalar(p, e);
}
#endif

typedef const unsigned char *(*utf8_run_fn)(const unsigned char *, const unsigned char *);
static utf8_run_fn utf8_run = utf8_run_scalar;

/* A string whose opening quote is at p: the position after its closing quote, or NULL. */
static inline const unsigned char *
string_end(const unsigned char *p, const unsigned char *e)
{
    p++;
    for (;;) {
        p = plain_end(p, e);
        if (*p == '"') {
            return p + 1;
        }
        switch (string_class[*p]) {
        case BACKSLASH:
            switch (p[1]) { /* p[1] is at most the line's newline */
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                p += 2;
                break;
            case 'u': {
                unsigned u, low;
                if (!hex4(p + 2, e, &u)) {
                    return NULL;
                }
                p += 6;
                if (u >= 0xDC00 && u <= 0xDFFF) {
                    return NULL; /* a low surrogate alone */
                }
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, e, &low) || low < 0xDC00 ||
                        low > 0xDFFF) {
                        return NULL; /* a high surrogate not followed by a low one */
                    }
                    p += 6;
                }
                break;
            }
            default:
                return NULL;
            }
            break;
        case HIGH:
            if ((p = utf8_run(p, e)) == NULL) {
                return NULL;
            }
            break;
        default: /* a raw control byte, or the end of the line */
            return NULL;
        }
    }
}

/* The rest of a number with a fraction or an exponent, from its first '.', 'e' or 'E' at p (int_digits:
 * the integer part's digits; int_zero: that part is "0"). NULL if it is not certainly one the rule takes
 * as it is (see the top of this file). */
static const unsigned char *
float_end(const unsigned char *p, Py_ssize_t int_digits, int int_zero)
{
    Py_ssize_t frac_zeros = 0, magnitude;
    int frac_nonzero = 0;
    long exponent = 0;
    if (*p == '.') {
        p++;
        if (!is_digit(*p)) {
            return NULL;
        }
        while (is_digit(*p)) {
            if (*p != '0') {
                frac_nonzero = 1;
            }
            else if (!frac_nonzero) {
                frac_zeros++;
            }
            p++;
        }
    }
    if (*p == 'e' || *p == 'E') {
        int negative = 0, digits = 0;
        p++;
        if (*p == '+' || *p == '-') {
            negative = *p == '-';
            p++;
        }
        if (!is_digit(*p)) {
            return NULL;
        }
        while (*p == '0') {
            p++;
        }
        while (is_digit(*p)) {
            if (++digits > 3) {
                return NULL;
            }
            exponent = exponent * 10 + (*p - '0');
            p++;
        }
        if (negative) {
            exponent = -exponent;
        }
    }
    if (!int_zero) {
        magnitude = int_digits - 1 + exponent; /* d.ddd x 10^magnitude */
    }
    else if (!frac_nonzero) {
        magnitude = exponent; /* zero */
    }
    else {
        magnitude = exponent - frac_zeros - 1; /* 0.00ddd: d x 10^magnitude */
    }
    return magnitude >= -300 && magnitude <= 300 ? p : NULL;
}

/* A number starting at p (a '-' or a digit): the position after it, or NULL. An integer of up to 18
 * digits, the common case, takes the first return. */
static inline const unsigned char *
number_end(const unsigned char *p)
{
    const unsigned char *digits;
    int int_zero = 0;
    if (*p == '-') {
        p++;
    }
    digits = p;
    if (*p == '0') {
        int_zero = 1;
        p++;
    }
    else if (is_digit(*p)) {
        do {
            p++;
        } while (is_digit(*p));
    }
    else {
        return NULL;
    }
    if (*p != '.' && (*p | 0x20) != 'e') {
        return p - digits <= 18 ? p : NULL;
    }
    return float_end(p, p - digits, int_zero);
}

/* A string, number or literal at p: the position after it, or NULL. What follows it is the grammar's to
 * check: after a value only whitespace, a comma, a closing bracket or the line's end may come, so a
 * number or literal run on ("1x", "truex", "01", "1.5.5") is refused there. */
static ALWAYS_INLINE const unsigned char *
scalar_end(const unsigned char *p, const unsigned char *e)
{
    switch (*p) {
    case '"':
        return string_end(p, e);
    case 't':
        p = e - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
        break;
    case 'f':
        p = e - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
        break;
    case 'n':
        p = e - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
        break;
    default:
        p = number_end(p);
        break;
    }
    return p;
}

/* A value at p: a container opens (goto), or a string, number or literal is passed (else return 0). A
 * macro, so each place has branches of its own to learn. */
#define VALUE(p)                                                                                              \
    if (*(p) == '{') {                                                                                        \
        goto object_open;                                                                                     \
    }                                                                                                         \
    if (*(p) == '[') {                                                                                        \
        goto array_open;                                                                                      \
    }                                                                                                         \
    if (((p) = scalar_end((p), e)) == NULL) {                                                                 \
        return NULL;                                                                                          \
    }

/* The line starting at p, up to its newline: if it is blank or certainly a record, where its newline
 * is, else NULL. e is the end of the walk, whose last byte is a newline: every scan stops at the line's
 * own newline (the sentinel: whitespace, strings, numbers and the grammar all refuse it), so most steps
 * check no bound, and nothing past e - 1 is read. */
static const unsigned char *
line_end(const unsigned char *p, const unsigned char *e)
{
    unsigned char stack[MAX_DEPTH]; /* '{' or '[' per open container */
    int depth = 0;

    SKIP_WS(p);
    if (*p == '\n') {
        return p; /* a blank line */
    }
    VALUE(p);
    goto document_end;

object_open: /* p at '{' */
    if (depth == MAX_DEPTH) {
        return NULL;
    }
    stack[depth++] = '{';
    p++;
    SKIP_WS(p);
    if (*p == '}') {
        p++;
        goto scope_end;
    }
object_key: /* p at the first byte of a key */
    if (*p != '"' || (p = string_end(p, e)) == NULL) {
        return NULL;
    }
    SKIP_WS(p);
    if (*p != ':') {
        return NULL;
    }
    p++;
    SKIP_WS(p);
    VALUE(p);
object_next: /* after a member's value */
    SKIP_WS(p);
    if (*p == ',') {
        p++;
        SKIP_WS(p);
        goto object_key;
    }
    if (*p == '}') {
        p++;
        goto scope_end;
    }
    return NULL;

array_open: /* p at '[' */
    if (depth == MAX_DEPTH) {
        return NULL;
    }
    stack[depth++] = '[';
    p++;
    SKIP_WS(p);
    if (*p == ']') {
        p++;
        goto scope_end;
    }
array_value: /* p at the first byte of an element */
    if (is_digit(p[0]) && (p[1] == ',' || p[1] == ']')) { /* a one-digit integer (grids of them are
                                                             * common): the general path, shortened */
        p++;
        goto array_next;
    }
    VALUE(p);
array_next: /* after an element */
    SKIP_WS(p);
    if (*p == ',') {
        p++;
        SKIP_WS(p);
        goto array_value;
    }
    if (*p == ']') {
        p++;
        goto scope_end;
    }
    return NULL;

scope_end: /* p after a '}' or ']' that closed the container on top */
    if (--depth == 0) {
        goto document_end;
    }
    if (stack[depth - 1] == '{') {
        goto object_next;
    }
    goto array_next;

document_end:
    SKIP_WS(p);
    return *p == '\n' ? p : NULL;
}

/* The first line of base[a:b] neither blank nor certainly a record: its offset, b if none, or -1 when
 * there is no memory. A last line without a newline is checked on a copy with one appended. */
static Py_ssize_t
scan_lines(const unsigned char *base, Py_ssize_t a, Py_ssize_t b)
{
    const unsigned char *p = base + a, *end = base + b, *last = end;
    while (last > p && last[-1] != '\n') {
        last--;
    }
    while (p < last) {
        const unsigned char *nl = line_end(p, last);
        if (nl == NULL) {
            return p - base;
        }
        p = nl + 1;
    }
    if (last < end) {
        unsigned char *copy = malloc((size_t)(end - last) + 1);
        int unsure;
        if (copy == NULL) {
            return -1;
        }
        memcpy(copy, last, (size_t)(end - last));
        copy[end - last] = '\n';
        unsure = line_end(copy, copy + (end - last) + 1) == NULL;
        free(copy);
        if (unsure) {
            return last - base;
        }
    }
    return b;
}

PyDoc_STRVAR(first_unsure_doc,
             "first_unsure(data, a, b, /)\n--\n\n"
             "The offset where the first line of data[a:b] that is neither blank nor certainly a record\n"
             "begins, or b. A line ends at a newline, or at b.");

/* METH_FASTCALL with positional arguments: the inline validator calls it once a line, where keyword
 * parsing cost as much as checking a 470-byte record. An int beyond Py_ssize_t is clamped (as far out of
 * range as it was). */
static PyObject *
first_unsure(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t a, b, found;
    Py_buffer buf;

    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "first_unsure() takes 3 positional arguments (%zd given)", nargs);
        return NULL;
    }
    a = PyNumber_AsSsize_t(args[1], NULL);
    if (a == -1 && PyErr_Occurred()) {
        return NULL;
    }
    b = PyNumber_AsSsize_t(args[2], NULL);
    if (b == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (a < 0 || a > b || b > buf.len) {
        PyErr_Format(PyExc_ValueError, "need 0 <= a <= b <= len(data), got a=%zd, b=%zd, len(data)=%zd", a, b,
                     buf.len);
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (b - a < 4096) { /* a line or two: releasing the GIL would cost more than the walk */
        found = scan_lines(buf.buf, a, b);
    }
    else {
        Py_BEGIN_ALLOW_THREADS
        found = scan_lines(buf.buf, a, b);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&buf);
    if (found < 0) {
        return PyErr_NoMemory();
    }
    return PyLong_FromSsize_t(found);
}

/* Whether the CPU can run utf8_run_ssse3. */
static int
have_ssse3(void)
{
#if HAVE_SSSE3
    __builtin_cpu_init();
    return __builtin_cpu_supports("ssse3") != 0;
#else
    return 0;
#endif
}

PyDoc_STRVAR(utf8_simd_doc, "utf8_simd(on, /)\n--\n\n"
                            "Check UTF-8 16 bytes a step (SSSE3) if on and the CPU can, else one sequence a\n"
                            "step; whether it now does. For tests: both ways must decide alike.");

static PyObject *
utf8_simd(PyObject *Py_UNUSED(module), PyObject *on)
{
    int want = PyObject_IsTrue(on);
    if (want < 0) {
        return NULL;
    }
    utf8_run = utf8_run_scalar;
#if HAVE_SSSE3
    if (want && have_ssse3()) {
        utf8_run = utf8_run_ssse3;
    }
#endif
    return PyBool_FromLong(utf8_run != utf8_run_scalar);
}

static PyMethodDef valid_methods[] = {
    {"first_unsure", (PyCFunction)(void (*)(void))first_unsure, METH_FASTCALL, first_unsure_doc},
    {"utf8_simd", utf8_simd, METH_O, utf8_simd_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef valid_module = {
    PyModuleDef_HEAD_INIT,
    "shardclaim._valid",
    "Which lines are certainly records, decided in C (see shardclaim.dataset.validate).",
    0,
    valid_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__valid(void)
{
    init_tables();
#if HAVE_SSSE3
    if (have_ssse3()) {
        utf8_run = utf8_run_ssse3;
    }
#endif
    return PyModuleDef_Init(&valid_module);
}
