;;; policy.scm — a site's policy, built from the rule modules.
;;;
;;; The mail exchanger of example.test: it takes mail for example.test and
;;; localhost, delivers it into var/mail/LOCALPART/Maildir/, and keeps out
;;; what a small site usually keeps out: open relaying, clients on a DNS
;;; blocklist, spam software that never retries (greylisting), clients that
;;; send too much too fast, broken messages, and Windows executables.
;;;
;;; Our own hosts, the loopback addresses and the office network below,
;;; are not greylisted or looked up in blocklists, so that the policy can be
;;; tried on one machine without waiting and without the network; every
;;; other rule applies to them too.
;;;
;;;   guillemot check-config -c examples/policy.scm
;;;   guillemot serve -c examples/policy.scm
;;;
;;; See "Rule modules" in the manual (info guillemot) for each module's
;;; keywords and their defaults.  Rules of one stage run in the order of
;;; this file, whether written here or added by a module's procedure.

(use-modules (guillemot)
             (srfi srfi-1)
             (guillemot rules anti-relay)
             (guillemot rules dnsbl)
             (guillemot rules greylist)
             (guillemot rules limits)
             (guillemot rules headers))

;;; Who we are.

;; The office network, whose machines send their mail through us: change
;; this to your own.  (192.0.2.0/24 is reserved for documentation.)
(define trusted-networks '("192.0.2.0/24"))

;; Our own hosts: this machine and the office.
(define own-hosts (append '("127.0.0.0/8" "::1") trusted-networks))

(define our-domains '("example.test" "localhost"))

(define-server
  #:hostname "mx.example.test"
  #:listen '("127.0.0.1:2525" "[::1]:2525")
  #:state-dir "var"
  #:max-message-size (* 25 1024 1024)
  ;; Our own blocklist, answered by the server itself (no name server is
  ;; asked for names under it): addresses that abused us, plus the test
  ;; entry every blocklist has, 127.0.0.2 (RFC 5782 §5).
  #:dns-local-zones '("blocklist.example.test")
  #:dns-local-data '("2.0.0.127.blocklist.example.test. 3600 IN A 127.0.0.2"
                     "13.113.0.203.blocklist.example.test. 3600 IN A 127.0.0.2"))

(local-domains our-domains)

(deliver-local (maildir "mail/~a/Maildir"))


;;; Connections.

;; No client may hog the server: at most 30 connections and 100 messages a
;; minute from one address (one /64 for IPv6).  Over that, 450: try later.
(limits #:window 60
        #:max-connections-per-window 30
        #:max-messages-per-window 100)

;; Clients listed in a blocklist get 554 at once.  A list that cannot be
;; asked lets the client in: the other rules still apply.  A public list
;; such as zen.spamhaus.org can be added to #:zones once the server's
;; resolver may query it (Spamhaus refuses queries that come through big
;; public resolvers).
(dnsbl #:zones '("blocklist.example.test")
       #:exempt-networks own-hosts)


;;; Recipients.

;; A mailbox that takes no mail, whoever sends it.  First, so that the
;; client gets the real answer at once rather than "greylisted" first.
(rule rcpt "blocked mailbox"
  (lambda (s rcpt)
    (if (string-ci=? rcpt "blocked@example.test")
        (reject 550 "5.7.1 <blocked@example.test>: This mailbox does not take mail")
        (next))))

;; Mail for other domains only from our own hosts (and, once SMTP AUTH
;; exists, from authenticated users: #:authenticated?).
(anti-relay #:local-domains our-domains
            #:trusted-networks own-hosts)

;; Anybody else waits five minutes the first time it writes from a given
;; network, with a given sender, to a given recipient.
(greylist #:delay 300
          #:exempt-networks own-hosts)


;;; The message, before the 250.

;; A client must not be able to forge our tag (see the last rule).
(rule data "drop forged tags"
  (lambda (s msg)
    (header-remove! msg "X-Guillemot-Policy")
    (next)))

;; Every message says who sent it and when (RFC 5322 §3.6); 64 KiB of
;; header fields is plenty.
(headers #:required '("From" "Date")
         #:max-header-size (* 64 1024))

;; No Windows executables as attachments.  The MIME structure comes from
;; (guillemot mime), which is new: a server without it leaves this rule out
;; (and says so in its log at start-up) rather than refuse to start.  Once
;; every server has it, (use-modules (guillemot mime)) and call
;; message-parts and part-filename directly.
(define mime
  (and (search-path %load-path "guillemot/mime.scm")
       (resolve-interface '(guillemot mime))))

(if mime
    (let ((message-parts (module-ref mime 'message-parts))
          (part-filename (module-ref mime 'part-filename)))
      (define (executable? part)
        (let ((name (part-filename part)))
          (and name (string-suffix-ci? ".exe" name))))
      (rule data "no executables"
        (lambda (s msg)
          (let ((exe (find executable? (message-parts msg))))
            (if exe
                (begin
                  (log-message s "executable attachment refused: filename=~s" (part-filename exe))
                  (reject 554 "5.7.1 Executable attachments are not accepted here"))
                (next))))))
    (log-message #f "policy.scm: no (guillemot mime): the rule \"no executables\" is left out"))

;; Last, so that only messages every other rule let through are tagged.
(rule data "tag"
  (lambda (s msg)
    (header-add! msg "X-Guillemot-Policy" "checked")
    (next)))
