;;; mbox.scm — like quickstart.scm, but each recipient's mail is appended to
;;; var/mail/LOCALPART.mbox (mboxrd format, locked with fcntl and a .lock file).
;;;
;;;   guillemot serve -c examples/mbox.scm

(use-modules (guillemot))

(define-server
  #:hostname "mx.example.test"
  #:listen '("127.0.0.1:2525" "[::1]:2525")
  #:state-dir "var")

(local-domains "example.test" "localhost")

(deliver-local (mbox "mail/~a.mbox"))
