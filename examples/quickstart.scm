;;; quickstart.scm — the smallest useful Guillemot.
;;;
;;; Accepts mail for example.test and localhost on port 2525 of the loopback
;;; addresses and delivers each recipient into var/mail/LOCALPART/Maildir/.
;;; Mail for any other domain is refused: this is not an open relay.
;;;
;;;   guillemot serve -c examples/quickstart.scm

(use-modules (guillemot))

(define-server
  #:hostname "mx.example.test"
  #:listen '("127.0.0.1:2525" "[::1]:2525")
  #:state-dir "var"
  #:max-message-size (* 25 1024 1024))

(local-domains "example.test" "localhost")

;; ~a is the recipient's local part; relative paths are under #:state-dir.
(deliver-local (maildir "mail/~a/Maildir"))
