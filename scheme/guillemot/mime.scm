;;; (guillemot mime) — the MIME parts of the message, for data rules.
;;;
;;; (message-parts MSG) lists the leaf parts of the message a data rule got,
;;; depth first, inside multiparts and attached messages; each part tells its
;;; content type, charset, file name, disposition and decoded size, and gives
;;; its decoded content on demand.  The parse is done by the server (GMime)
;;; once per message text: asking again is cheap.
;;;
;;;   (rule data "reject executables"
;;;     (lambda (s msg)
;;;       (cond ((message-parts-truncated? msg)
;;;              (reject 554 "5.7.1 Message structure too complex to check"))
;;;             ((any (lambda (name) (string-suffix-ci? ".exe" name))
;;;                   (attachment-filenames msg))
;;;              (reject 554 "5.7.1 Executable attachments are not accepted"))
;;;             (else (next)))))
;;;
;;; The manual's section "Reading MIME parts" (doc/mime.texi) has the same
;;; text as the docstrings here.

(define-module (guillemot mime)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:use-module (rnrs bytevectors)
  #:use-module (ice-9 iconv)
  #:export (message-parts
            message-parts-truncated?
            mime-part?
            part-content-type
            part-charset
            part-filename
            part-filenames
            part-disposition
            part-size
            part-body
            part-text
            part-attachment?
            attachment-filenames))

;; The primitives live in (guillemot core), made by the server; look them up
;; when called, so that this module compiles and loads without the server,
;; and without (guillemot), which re-exports this module.
(define core-interface #f)              ; found once: rules call primitives often

(define (core name)
  (unless core-interface
    (set! core-interface (resolve-interface '(guillemot core))))
  (module-ref core-interface name))

(define-record-type <mime-part>
  (make-mime-part message parse index content-type charset filename filenames
                  disposition size)
  %mime-part?
  (message part-message)
  (parse part-parse)
  (index part-index)
  (content-type %part-content-type)
  (charset %part-charset)
  (filename %part-filename)
  (filenames %part-filenames)
  (disposition %part-disposition)
  (size %part-size))

;; The exported predicate and accessors are procedures rather than the
;; record's own inlinable bindings, which are macros: a configuration may
;; fetch them with module-ref, as examples/policy.scm does.

(define (mime-part? object)
  "Is OBJECT a MIME part record, as @code{message-parts} returns?"
  (%mime-part? object))

(define (part-content-type part)
  "The content type of PART as @samp{@var{type}/@var{subtype}} in lower
case, without parameters (text/plain when the part does not say):
@code{(part-content-type p)} @result{} @code{\"application/x-msdownload\"}."
  (%part-content-type part))

(define (part-charset part)
  "The @code{charset} parameter of the Content-Type of PART in lower case, or
@code{#f}: @code{(part-charset p)} @result{} @code{\"iso-8859-1\"}."
  (%part-charset part))

(define (part-disposition part)
  "The Content-Disposition of PART (RFC 2183) in lower case, or @code{#f} when
it has none: @code{(part-disposition p)} @result{} @code{\"attachment\"}."
  (%part-disposition part))

(define (part-size part)
  "The size in bytes of the decoded content of PART, what @code{part-body}
returns: @code{(part-size p)} @result{} 24576."
  (%part-size part))

(define (part-filename part)
  "The file name of PART: the @code{filename} parameter of its
Content-Disposition, or when there is none the @code{name} parameter of its
Content-Type; @code{#f} when it has neither.  RFC 2231 and RFC 2047 encodings
are decoded: @code{(part-filename p)} @result{} @code{\"evil.exe\"} for
@code{filename*=UTF-8''evil%2Eexe}."
  (%part-filename part))

(define (part-filenames part)
  "The names PART gives: both when the Content-Disposition filename and the
Content-Type name differ, the one name when there is one, @code{'()} when
there is none: @code{(part-filenames p)} @result{} @code{(\"a.pdf\"
\"a.exe\")}."
  (%part-filenames part))

(define (vector->part msg parse v)
  (make-mime-part msg parse
                  (vector-ref v 0) (vector-ref v 1) (vector-ref v 2) (vector-ref v 3)
                  (vector-ref v 4) (vector-ref v 5) (vector-ref v 6)))

(define (parse-of msg)
  ((core '%mime-parts) msg))

(define (message-parts msg)
  "@lisp
(map part-content-type (message-parts msg))
@result{} (\"text/plain\" \"text/html\" \"application/pdf\")
@end lisp

Return the parts of MESSAGE, the message object of a data rule, as a list of
MIME part records, depth first: at most 1000, and none when the message has
only empty multiparts or its parts are all nested too deep."
  (let ((result (parse-of msg)))
    (map (lambda (v) (vector->part msg (vector-ref result 0) v))
         (vector-ref result 2))))

(define (message-parts-truncated? msg)
  "@lisp
(message-parts-truncated? msg)   @result{} #f
(message-parts-truncated? msg)   @result{} too-many-parts
@end lisp

Return @code{#f} when @code{message-parts} lists every part of MESSAGE;
otherwise why not, as a symbol: @code{too-deep} (multiparts or attached
messages nested deeper than 20 levels: what lies deeper is left out),
@code{too-many-parts} (more than 1000 parts: the first 1000 are listed), or
@code{too-slow} (the parse ran out of time: the parts found before are
listed)."
  (vector-ref (parse-of msg) 1))

(define (part-body part)
  "@lisp
(bytevector-length (part-body p))   @result{} 24576
(bytevector-u8-ref (part-body p) 0) @result{} 77          @r{an} \"M\" @r{of} \"MZ\"
@end lisp

The decoded content of PART as a bytevector: base64, quoted-printable and
uuencode are undone (RFC 2045 §6); other contents are the bytes as received,
line ends LF.  The content is decoded when asked for, each time: a rule that
reads it more than once keeps it in a variable.  The bytevector procedures
are in @code{(rnrs bytevectors)}."
  ((core '%mime-part-body) (part-message part) (part-parse part) (part-index part)))

(define (decode bv charset)
  (define (guess)
    ;; No charset, or one that is not known: UTF-8 when the bytes are,
    ;; otherwise one character per byte (ISO-8859-1), as header-ref does.
    (catch 'decoding-error
      (lambda () (bytevector->string bv "UTF-8" 'error))
      (lambda _ (bytevector->string bv "ISO-8859-1"))))
  (if (or (not charset) (member charset '("us-ascii" "ascii" "utf-8" "utf8")))
      (guess)
      (catch #t
        (lambda () (bytevector->string bv charset 'substitute))
        (lambda _ (guess)))))

(define (part-text part)
  "@lisp
(part-text p)   @result{} \"Hello,\\nthe report is attached.\\n\"
@end lisp

The decoded content of PART as a string, converted from its charset; a byte
sequence that is not valid in that charset becomes U+FFFD.  Without a
charset, with us-ascii or UTF-8, or with a charset that is not known: the
content is read as UTF-8 when it is valid UTF-8, otherwise as ISO-8859-1
(one character per byte).  Meant for text parts; any part can be read this
way."
  (decode (part-body part) (part-charset part)))

(define (part-attachment? part)
  "@lisp
(map part-filename (filter part-attachment? (message-parts msg)))
@result{} (\"report.pdf\" \"logo.png\")
@end lisp

Is PART a file rather than the text of the message: does its
Content-Disposition say @code{attachment}, or does it have a file name?  An
inline image with a name counts as an attachment."
  (or (equal? (part-disposition part) "attachment")
      (and (part-filename part) #t)))

(define (attachment-filenames msg)
  "@lisp
(attachment-filenames msg)   @result{} (\"report.pdf\" \"setup.exe\")
@end lisp

Every file name the parts of MESSAGE give, in order, each once: the
@code{part-filenames} of every part.  A message without named parts gives
@code{'()}."
  (delete-duplicates (append-map part-filenames (message-parts msg))))
