;;; (guillemot rules anti-relay) — no open relay.
;;;
;;; An open relay passes mail from anybody to anybody.  This rule lets a
;;; recipient through when its domain is one of ours, or when the client may
;;; send anywhere: it connects from a trusted network, or it has
;;; authenticated.  Anybody else is refused with 554 5.7.1, as Postfix's
;;; reject_unauth_destination does.
;;;
;;;   (use-modules (guillemot rules anti-relay))
;;;   (anti-relay #:local-domains '("example.test" ".example.test")
;;;               #:trusted-networks '("127.0.0.0/8" "::1" "192.0.2.0/24"))
;;;
;;; The rule only refuses: what it lets through gets (next), so that later
;;; rcpt rules (greylisting, blocked mailboxes) still run.  It does not
;;; replace the server's routing, which still refuses a domain that is not
;;; local when there is no way to relay it.

(define-module (guillemot rules anti-relay)
  #:use-module (srfi srfi-1)
  #:use-module ((guillemot) #:select (rule next reject client-address
                                      address-domain domain-matches?))
  #:use-module (guillemot rules common)
  #:export (anti-relay))

(define (domain-pattern? x)
  (and (string? x)
       (not (string-null? (string-trim-right x #\.)))
       (not (string-any char-whitespace? x))
       (not (string-index x #\@))))

(define-rules (anti-relay
               (local-domains '())
               (trusted-networks '("127.0.0.0/8" "::1"))
               (authenticated? (lambda (s) #f)))
  "Add the rcpt rule @code{\"anti-relay\"}: a recipient passes (the rule
answers @code{(next)}) when its domain matches one of @var{local-domains}
(patterns as for @code{domain-matches?}: @code{\"example.test\"} for the
domain itself, @code{\".example.test\"} for its subdomains), when it has no
domain (@code{postmaster}), when the client address is in one of
@var{trusted-networks}, or when @code{(@var{authenticated?} session)} is
true; any other recipient is refused with
@samp{554 5.7.1 Relay access denied}."
  (check-argument 'anti-relay #:local-domains local-domains
                  (lambda (x) (and (list? x) (every domain-pattern? x)))
                  "a list of domains such as (\"example.test\" \".example.test\")")
  (let ((trusted (parse-networks 'anti-relay #:trusted-networks trusted-networks)))
    (check-argument 'anti-relay #:authenticated? authenticated? (procedure-taking? 1)
                    "a procedure taking the session, such as (lambda (s) #f)")
    (rule rcpt "anti-relay"
      (lambda (s rcpt)
        (let ((domain (address-domain rcpt)))
          (if (or (not domain)
                  (any (lambda (pattern) (domain-matches? domain pattern)) local-domains)
                  (client-in? (client-address s) trusted)
                  (authenticated? s))
              (next)
              (reject 554 "5.7.1 Relay access denied")))))))
