;;; (guillemot) — what a configuration file sees.
;;;
;;; A configuration file is a Scheme program evaluated in a fresh module that
;;; already uses this one.  It declares the server with define-server, the
;;; domains delivered here with local-domains, and where their mail goes with
;;; deliver-local.

(define-module (guillemot)
  #:use-module (srfi srfi-9)
  #:export (define-server
            local-domains
            deliver-local
            maildir
            mbox
            mailbox?
            mailbox-kind
            mailbox-template))

;; The C primitives live in (guillemot core), created by the server before
;; any configuration is read; look them up when called, so that this module
;; also compiles without the server.
(define (core name)
  (module-ref (resolve-interface '(guillemot core)) name))

(define (config-error message . args)
  (throw 'config-error (apply format #f message args)))

(define (define-server . options)
  "Declare the server's settings as keyword arguments, for example
@code{(define-server #:hostname \"mx.example.test\" #:listen '(\"127.0.0.1:25\"))}.
Every keyword is a setting of the settings table; unknown ones are errors."
  (let ((known ((core '%settings))))
    (let loop ((rest options))
      (cond ((null? rest) *unspecified*)
            ((not (keyword? (car rest)))
             (config-error "define-server: expected a keyword such as #:hostname, got ~s"
                           (car rest)))
            ((null? (cdr rest))
             (config-error "define-server: #:~a has no value" (keyword->symbol (car rest))))
            (else
             (let ((name (keyword->symbol (car rest))))
               (unless (memq name known)
                 (config-error "define-server: unknown setting #:~a (known: ~a)"
                               name
                               (string-join (map symbol->string known) ", ")))
               ((core '%server-set!) name (cadr rest))
               (loop (cddr rest))))))))

(define (local-domains . domains)
  "Declare the domains whose mail is delivered on this machine, as strings
or one list of strings: @code{(local-domains \"example.test\" \"localhost\")}.
Mail for any other domain is refused with 554 5.7.1."
  (let ((flat (if (and (= (length domains) 1) (list? (car domains)))
                  (car domains)
                  domains)))
    (for-each (lambda (d)
                (unless (and (string? d) (positive? (string-length d)))
                  (config-error "local-domains: expected domain names as strings, got ~s" d)))
              flat)
    ((core '%set-local-domains!) flat)))

(define-record-type <mailbox>
  (make-mailbox kind template)
  mailbox?
  (kind mailbox-kind)
  (template mailbox-template))

(define (check-template who template)
  (unless (and (string? template) (positive? (string-length template)))
    (config-error "~a: expected a path template string such as \"mail/~~a/Maildir\", got ~s"
                  who template)))

(define (maildir template)
  "A Maildir for each recipient: in TEMPLATE, @code{~a} stands for the local
part (lower-cased).  A relative path is under the state directory."
  (check-template 'maildir template)
  (make-mailbox 'maildir template))

(define (mbox template)
  "An mbox file for each recipient: in TEMPLATE, @code{~a} stands for the
local part (lower-cased).  A relative path is under the state directory."
  (check-template 'mbox template)
  (make-mailbox 'mbox template))

(define (deliver-local mailbox)
  "Deliver mail for the local domains into MAILBOX, made by @code{maildir} or
@code{mbox}: @code{(deliver-local (maildir \"mail/~a/Maildir\"))}."
  (unless (mailbox? mailbox)
    (config-error "deliver-local: expected (maildir TEMPLATE) or (mbox TEMPLATE), got ~s"
                  mailbox))
  ((core '%set-local-delivery!) (mailbox-kind mailbox) (mailbox-template mailbox)))
