;;; (guillemot rules common) — what the rule modules share.
;;;
;;; A rule module is an ordinary Guile module, (guillemot rules NAME), that
;;; exports one procedure NAME.  Called from a configuration file with
;;; keyword arguments, NAME checks them and adds its rules with (rule ...):
;;;
;;;   (use-modules (guillemot rules greylist))
;;;   (greylist #:delay 300 #:exempt-networks '("127.0.0.0/8" "::1"))
;;;
;;; This module is not a rule module itself: it holds the pieces every rule
;;; module needs, so that they all check their arguments the same way and
;;; say so with the same words.  define-rules declares such a procedure;
;;; check-argument and parse-networks validate keyword values; the others
;;; are small helpers about clients and time.
;;;
;;; Mistakes throw 'config-error with a message that starts with the
;;; procedure's name ("greylist: #:delay expects ..."), which the loader
;;; reports as FILE:LINE:COLUMN of the call in the configuration file.

(define-module (guillemot rules common)
  #:use-module (srfi srfi-1)
  #:use-module ((guillemot address) #:select (parse-cidr cidr? address-in-any?))
  #:export (define-rules
            rules-error
            check-argument
            parse-networks
            client-in?
            client-network
            procedure-taking?
            non-negative-real?
            positive-real?
            positive-integer?
            default-clock))

(define (rules-error who message . args)
  "Throw 'config-error with MESSAGE (a format string) after WHO's name."
  (throw 'config-error
         (string-append (symbol->string who) ": " (apply format #f message args))))

;; Check that ARGS, the arguments given to WHO, are KEYWORD VALUE pairs with
;; keywords from KNOWN (a list of symbols), each at most once.
(define (check-keyword-arguments who args known)
  (define (known-text)
    (string-join (map (lambda (name) (string-append "#:" (symbol->string name))) known) ", "))
  (let loop ((rest args) (seen '()))
    (unless (null? rest)
      (let ((key (car rest)))
        (unless (keyword? key)
          (rules-error who "expected keyword arguments such as #:~a, got ~s"
                       (car known) key))
        (let ((name (keyword->symbol key)))
          (unless (memq name known)
            (rules-error who "unknown keyword #:~a (known: ~a)" name (known-text)))
          (when (memq name seen)
            (rules-error who "#:~a is given twice" name))
          (when (null? (cdr rest))
            (rules-error who "#:~a has no value" name))
          (loop (cddr rest) (cons name seen)))))))

(define-syntax define-rules
  (syntax-rules ()
    "Define NAME, a procedure of keyword arguments only, each (VAR DEFAULT):
@code{#:VAR} defaults to DEFAULT, an expression that may use the VARs
before it.  A call with anything but those keywords, each with a value and
at most once, throws 'config-error naming NAME."
    ((_ (name (var default) ...) docstring body0 body ...)
     (define (name . args)
       docstring
       (check-keyword-arguments 'name args '(var ...))
       (apply (lambda* (#:key (var default) ...) body0 body ...) args)))))

(define (check-argument who keyword value valid? expectation)
  "Return VALUE when @code{(VALID? VALUE)} is true; otherwise throw
'config-error: @samp{WHO: #:KEYWORD expects EXPECTATION, got VALUE}."
  (unless (valid? value)
    (rules-error who "#:~a expects ~a, got ~s" (keyword->symbol keyword) expectation value))
  value)

(define (parse-networks who keyword value)
  "Parse VALUE, the list of networks given to WHO as #:KEYWORD (text such as
@code{\"192.0.2.0/24\"}, @code{\"2001:db8::/32\"} or a single address, or
values of @code{parse-cidr}), once, into a list of values of
@code{parse-cidr}."
  (unless (list? value)
    (rules-error who "#:~a expects a list of networks such as (\"192.0.2.0/24\" \"::1\"), got ~s"
                 (keyword->symbol keyword) value))
  (map (lambda (network)
         (catch 'config-error
           (lambda () (parse-cidr network))
           (lambda (key message)
             ;; "parse-cidr: invalid network ..." -> "WHO: #:KEYWORD: invalid network ..."
             (rules-error who "#:~a: ~a" (keyword->symbol keyword)
                          (if (string-prefix? "parse-cidr: " message)
                              (substring message (string-length "parse-cidr: "))
                              message)))))
       value))

(define (client-in? address networks)
  "Is ADDRESS, a client address as text, in one of NETWORKS (values of
@code{parse-cidr})?  #f for an empty list, without parsing ADDRESS."
  (and (pair? networks) (address-in-any? address networks)))

;; ADDRESS as (FAMILY . INTEGER), an IPv4-mapped IPv6 address as IPv4; #f
;; when it is not an IP address.
(define (parse-ip address)
  (and (string? address)
       (let* ((v6? (string-index address #\:))
              (n (false-if-exception (inet-pton (if v6? AF_INET6 AF_INET) address))))
         (cond ((not n) #f)
               ((and v6? (= (ash n -32) #xffff)) (cons AF_INET (logand n #xffffffff)))
               (else (cons (if v6? AF_INET6 AF_INET) n))))))

(define (client-network address ipv4-prefix ipv6-prefix)
  "The network of ADDRESS (text) that rules count together: its first
IPV4-PREFIX bits for IPv4 (an IPv4-mapped IPv6 address counts as IPv4),
its first IPV6-PREFIX bits for IPv6, as text such as
@code{\"192.0.2.0/24\"}; ADDRESS itself when it is not an IP address.

@example
(client-network \"192.0.2.77\" 24 64)        @result{} \"192.0.2.0/24\"
(client-network \"2001:db8:1:2:3::4\" 24 64) @result{} \"2001:db8:1:2::/64\"
@end example"
  (let ((ip (parse-ip address)))
    (if (not ip)
        address
        (let* ((family (car ip))
               (width (if (= family AF_INET) 32 128))
               (prefix (if (= family AF_INET) ipv4-prefix ipv6-prefix))
               (shift (- width prefix)))
          (format #f "~a/~a" (inet-ntop family (ash (ash (cdr ip) (- shift)) shift)) prefix)))))

(define (procedure-taking? n)
  "A predicate: is its argument a procedure that can be called with N
arguments?"
  (lambda (proc)
    (and (procedure? proc)
         (let ((arity (procedure-minimum-arity proc)))
           (or (not arity)
               (let ((req (car arity)) (opt (cadr arity)) (rest? (caddr arity)))
                 (and (<= req n) (or rest? (>= (+ req opt) n)))))))))

(define (non-negative-real? x) (and (real? x) (>= x 0)))
(define (positive-real? x) (and (real? x) (> x 0)))
(define (positive-integer? x) (and (exact-integer? x) (> x 0)))

(define (default-clock)
  "The time of day in seconds since the epoch, with microseconds."
  (let ((now (gettimeofday)))
    (+ (car now) (/ (cdr now) 1000000.))))
