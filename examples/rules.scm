;;; rules.scm — quickstart.scm with a few policy rules.
;;;
;;; The same server as quickstart.scm (mail for example.test and localhost on
;;; port 2525 of the loopback addresses, one Maildir per recipient under
;;; var/mail/), plus rules at the helo, rcpt and data stages.  The rules of a
;;; stage run in the order of this file; the first verdict other than (next)
;;; decides.  See "Writing policies" in the manual (info guillemot).
;;;
;;;   guillemot check-config -c examples/rules.scm
;;;   guillemot serve -c examples/rules.scm

(use-modules (guillemot))

(define-server
  #:hostname "mx.example.test"
  #:listen '("127.0.0.1:2525" "[::1]:2525")
  #:state-dir "var"
  #:max-message-size (* 25 1024 1024))

(local-domains "example.test" "localhost")

(deliver-local (maildir "mail/~a/Maildir"))

;;; HELO and EHLO.

(define (loopback? address)
  ;; client-address is text: "127.0.0.1", "::1", ...
  (or (string-prefix? "127." address) (string=? address "::1")))

;; Only this machine calls itself "localhost".  Deferred rather than refused,
;; so that a misconfigured but honest client can retry with a better name.
(rule helo "no foreign localhost"
  (lambda (s name)
    (if (and (string-ci=? name "localhost")
             (not (loopback? (client-address s))))
        (defer 450 "4.7.1 You are not localhost: send your own host name")
        (next))))

;;; RCPT TO.  The argument is the address without angle brackets, as the
;;; client spelled it.  (next) and (accept) both leave the recipient to the
;;; built-in routing, which still refuses domains that are not local.

(rule rcpt "blocked mailbox"
  (lambda (s rcpt)
    (if (string-ci=? rcpt "blocked@example.test")
        (reject 550 "5.7.1 <blocked@example.test>: This mailbox does not take mail")
        (next))))

;; Per-connection variables outlive transactions (RSET, several messages)
;; and are gone when the client disconnects.  This counts the RCPT commands
;; that reach this rule: not the blocked one above (its verdict decided),
;; but those the built-in routing refuses afterwards, and those deferred here.
(define max-rcpt-per-connection 100)

(rule rcpt "recipients per connection"
  (lambda (s rcpt)
    (let ((n (1+ (session-ref s 'rcpt-count 0))))
      (session-set! s 'rcpt-count n)
      (if (> n max-rcpt-per-connection)
          (defer 452 "4.5.3 Too many recipients for one connection, try again later")
          (next)))))

;;; The message, before the 250: headers can be read, added and removed.
;;; The Received: header the server adds is not among them yet.

;; A client must not be able to forge our tag (below).
(rule data "drop forged tags"
  (lambda (s msg)
    (header-remove! msg "X-Guillemot-Policy")
    (next)))

(rule data "log the subject"
  (lambda (s msg)
    (let ((subject (header-ref msg "Subject")))
      (log-message s "subject=~s, size=~a, rcpt-this-connection=~a"
                   (if (null? subject) "" (car subject))
                   (message-size s)
                   (session-ref s 'rcpt-count 0)))
    (next)))

;; Last, so that only messages every other rule let through are tagged.
(rule data "tag"
  (lambda (s msg)
    (header-add! msg "X-Guillemot-Policy" "checked")
    (next)))

;;; After the 250: the queued rules run once per message, before it is
;;; delivered; the delivery rules for each recipient at each attempt.

;; Mail sent to the postmaster is archived too (a blind copy, written back
;; to the queue file before anything is delivered).
(rule queued "archive postmaster mail"
  (lambda (s msg)
    (when (member "postmaster@example.test" (recipients s))
      (add-recipient! s "archive@example.test"))
    (next)))

;; The archive is one mbox file rather than a Maildir.
(rule delivery "archive into an mbox"
  (lambda (s rcpt)
    (when (string=? rcpt "archive@example.test")
      (deliver-to! s rcpt (mbox "mail/archive.mbox")))
    (next)))
