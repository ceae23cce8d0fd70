;;; (guillemot rules headers) — required header fields, size of the header section.
;;;
;;; RFC 5322 §3.6 requires two header fields in every message, From: and
;;; Date:.  Message-ID: is only recommended ("SHOULD") and many programs
;;; that submit mail leave it out, so it is not required by default.  A
;;; huge header section is either broken or an attack on the programs that
;;; will parse it.
;;;
;;;   (use-modules (guillemot rules headers))
;;;   (headers #:required '("From" "Date" "Message-ID")
;;;            #:max-header-size (* 64 1024))

(define-module (guillemot rules headers)
  #:use-module (srfi srfi-1)
  #:use-module ((guillemot) #:select (rule next reject))
  #:use-module (guillemot rules common)
  #:export (headers))

;; All the header fields of MSG as (NAME . VALUE) pairs: (guillemot core)'s
;; primitive, which header-ref filters.
(define (all-headers msg)
  ((module-ref (resolve-interface '(guillemot core)) '%message-headers) msg))

(define (header-section-size fields)
  "The size in bytes of a header section made of FIELDS, (NAME . VALUE)
pairs with unfolded values, written as NAME: VALUE CRLF each.  Folded fields
were a few bytes longer on the wire (their line breaks)."
  (fold (lambda (field total)
          (+ total (string-utf8-length (car field)) 2 (string-utf8-length (cdr field)) 2))
        0 fields))

(define (header-name? x)
  (and (string? x) (<= 1 (string-length x) 100)
       (string-every (lambda (c) (and (char<? #\space c #\del) (not (char=? c #\:)))) x)))

(define-rules (headers
               (required '("From" "Date"))
               (max-header-size 102400))
  "Add the data rules @code{\"headers size\"}, which refuses a message whose
header section is larger than @var{max-header-size} bytes with
@samp{552 5.3.4 Message header section too big (@var{n} bytes, at most
@var{max-header-size})}, and @code{\"headers required\"}, which refuses a
message that lacks one of the header fields named in @var{required}
(compared without regard to case) with @samp{550 5.6.0 Message lacks the
required header field @var{name}}.  @code{#f} for @var{max-header-size}, or
@code{'()} for @var{required}, adds no rule."
  (check-argument 'headers #:required required
                  (lambda (x) (and (list? x) (every header-name? x)))
                  "a list of header field names such as (\"From\" \"Date\")")
  (check-argument 'headers #:max-header-size max-header-size
                  (lambda (x) (or (not x) (positive-integer? x)))
                  "a number of bytes, 1 or more, or #f for no limit")
  (when max-header-size
    (rule data "headers size"
      (lambda (s msg)
        (let ((size (header-section-size (all-headers msg))))
          (if (> size max-header-size)
              (reject 552 (format #f "5.3.4 Message header section too big (~a bytes, at most ~a)"
                                  size max-header-size))
              (next))))))
  (unless (null? required)
    (rule data "headers required"
      (lambda (s msg)
        (let* ((present (map car (all-headers msg)))
               (missing (find (lambda (name) (not (member name present string-ci=?)))
                              required)))
          (if missing
              (reject 550 (format #f "5.6.0 Message lacks the required header field ~a" missing))
              (next)))))))
