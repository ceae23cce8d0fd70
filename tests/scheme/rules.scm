;;; tests/scheme/rules.scm — the rule modules, (guillemot rules NAME), without
;;; a server.  Run by tests/scheme/run-srfi64, or alone:
;;;   guile -L scheme --no-auto-compile -s tests/scheme/rules.scm
;;;
;;; The pure parts are tested directly: argument checking, the greylist
;;; store and decisions, the limits counters, the names a DNS blocklist is
;;; asked.  Then the rules themselves run on made-up sessions: the server's
;;; primitives, (guillemot core), are replaced by a few stand-ins below, the
;;; clock by a variable and the DNS by a table.

;; The server creates (guillemot core); here, the primitives rules use.
(define-module (guillemot core)
  #:export (%session-sender %log %message-headers test-log test-log-clear!))

(define logged '())
(define (%session-sender handle) (assq-ref handle 'sender))
(define (%log id text) (set! logged (cons text logged)))
(define (%message-headers msg) msg)     ; a test message is its header list
(define (test-log) (reverse logged))
(define (test-log-clear!) (set! logged '()))

(define-module (tests rules)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-64)
  #:use-module (guillemot)
  #:use-module (guillemot core)
  #:use-module (guillemot rules common)
  #:use-module (guillemot rules anti-relay)
  #:use-module (guillemot rules dnsbl)
  #:use-module (guillemot rules greylist)
  #:use-module (guillemot rules limits)
  #:use-module (guillemot rules headers))

(include "tap-runner.scm")

;; The message of the config-error that EXPR throws, or #f when it returns.
(define-syntax config-error-of
  (syntax-rules ()
    ((_ expr)
     (catch 'config-error
       (lambda () expr #f)
       (lambda (key message) message)))))

(define-syntax test-config-error
  (syntax-rules ()
    ((_ name message expr)
     (test-equal name message (config-error-of expr)))))

;; The rules that THUNK adds, as the configuration loader would see them.
(define (rules-added thunk)
  ((@@ (guillemot) %reset-rules!))
  (thunk)
  ((@@ (guillemot) %loaded-rules)))

(define rule-stage (@@ (guillemot) rule-stage))
(define rule-name (@@ (guillemot) rule-name))
(define rule-proc (@@ (guillemot) rule-proc))
(define (describe rules) (map (lambda (r) (list (rule-stage r) (rule-name r))) rules))

;; A session of a client at ADDRESS, with SENDER after MAIL.
(define* (session address #:key (sender #f))
  ((@@ (guillemot) make-session) `((client-address . ,address)) (make-hash-table) #f
   `((sender . ,sender))))

;; What a verdict says: (next), (reject 554 "5.7.1 ...") and so on.
(define (verdict v)
  (let ((kind ((@@ (guillemot) verdict-kind) v)))
    (if (memq kind '(reject defer))
        (list kind ((@@ (guillemot) verdict-code) v) ((@@ (guillemot) verdict-text) v))
        (list kind))))

;; Run the rule named NAME of RULES on ARGS (the session first).
(define (run rules name . args)
  (let ((r (find (lambda (r) (string=? (rule-name r) name)) rules)))
    (unless r (error "no rule named" name (describe rules)))
    (verdict (apply (rule-proc r) args))))

;; Run every rule of STAGE in order, as the server does: the first verdict
;; other than (next) decides.
(define (run-stage rules stage . args)
  (let loop ((rs rules))
    (cond ((null? rs) '(next))
          ((not (eq? (rule-stage (car rs)) stage)) (loop (cdr rs)))
          (else (let ((v (verdict (apply (rule-proc (car rs)) args))))
                  (if (equal? v '(next)) (loop (cdr rs)) v))))))

;; A clock that tests move by hand.
(define now 1000000)
(define (clock) now)
(define (advance! seconds) (set! now (+ now seconds)))

(test-begin "rules")


(test-begin "keyword arguments")

(test-config-error "unknown keyword, with the known ones"
  "greylist: unknown keyword #:dely (known: #:delay, #:expire, #:remember, #:exempt-networks, #:ipv4-prefix, #:ipv6-prefix, #:clock, #:store)"
  (greylist #:dely 300))
(test-config-error "a value where a keyword should be"
  "limits: expected keyword arguments such as #:window, got 60"
  (limits 60))
(test-config-error "a keyword without a value"
  "headers: #:required has no value"
  (headers #:required))
(test-config-error "a keyword given twice"
  "anti-relay: #:local-domains is given twice"
  (anti-relay #:local-domains '("a.test") #:local-domains '("b.test")))
(test-equal "a call that fails adds no rule" '()
  (rules-added (lambda () (config-error-of (greylist #:delay -1)))))
(test-equal "defaults: every procedure can be called without arguments but dnsbl"
  '((rcpt "anti-relay")
    (rcpt "greylist")
    (connect "limits connections") (mail "limits messages") (data "limits messages")
    (data "headers size") (data "headers required"))
  (describe (rules-added (lambda () (anti-relay) (greylist) (limits) (headers)))))

(test-end "keyword arguments")


(test-begin "argument errors")

(test-config-error "greylist #:delay negative"
  "greylist: #:delay expects a number of seconds, 0 or more, got -1"
  (greylist #:delay -1))
(test-config-error "greylist #:expire not after #:delay"
  "greylist: #:expire expects a number of seconds, more than #:delay (600), got 300"
  (greylist #:delay 600 #:expire 300))
(test-config-error "greylist #:remember"
  "greylist: #:remember expects a number of seconds, more than 0, got \"36d\""
  (greylist #:remember "36d"))
(test-config-error "greylist #:ipv4-prefix"
  "greylist: #:ipv4-prefix expects a prefix length from 0 to 32, got 33"
  (greylist #:ipv4-prefix 33))
(test-config-error "greylist #:clock"
  "greylist: #:clock expects a procedure of no argument returning seconds, got 5"
  (greylist #:clock 5))
(test-config-error "greylist #:store"
  "greylist: #:store expects #f or a store from make-greylist-store or make-memory-greylist-store, got memory"
  (greylist #:store 'memory))
(test-config-error "greylist #:exempt-networks, a bad network"
  "greylist: #:exempt-networks: invalid network \"127.0.0.1/8\": bits after the first 8 are set (did you mean \"127.0.0.0/8\"?)"
  (greylist #:exempt-networks '("127.0.0.1/8")))
(test-config-error "greylist #:exempt-networks, not a list"
  "greylist: #:exempt-networks expects a list of networks such as (\"192.0.2.0/24\" \"::1\"), got \"127.0.0.0/8\""
  (greylist #:exempt-networks "127.0.0.0/8"))
(test-config-error "make-memory-greylist-store #:max-entries"
  "make-memory-greylist-store: #:max-entries expects a number of entries, 1 or more, got 0"
  (make-memory-greylist-store #:max-entries 0))
(test-config-error "dnsbl without zones"
  "dnsbl: #:zones expects a non-empty list of DNS zones such as (\"zen.spamhaus.org\"), got ()"
  (dnsbl))
(test-config-error "dnsbl zone that is not a domain"
  "dnsbl: #:zones expects a non-empty list of DNS zones such as (\"zen.spamhaus.org\"), got (\"zen.example\" \"bad zone\")"
  (dnsbl #:zones '("zen.example" "bad zone")))
(test-config-error "dnsbl #:on-failure"
  "dnsbl: #:on-failure expects 'next (let the client in) or 'defer (451 4.4.3), got reject"
  (dnsbl #:zones '("zen.example") #:on-failure 'reject))
(test-config-error "dnsbl #:stage"
  "dnsbl: #:stage expects 'connect, 'mail or 'rcpt, got data"
  (dnsbl #:zones '("zen.example") #:stage 'data))
(test-config-error "dnsbl #:lookup"
  "dnsbl: #:lookup expects a procedure taking a name and a record type, such as dns-lookup, got #f"
  (dnsbl #:zones '("zen.example") #:lookup #f))
(test-config-error "dnsbl #:listed-networks"
  "dnsbl: #:listed-networks: invalid network \"127.0.0.0/33\": prefix length 33 is more than 32"
  (dnsbl #:zones '("zen.example") #:listed-networks '("127.0.0.0/33")))
(test-config-error "anti-relay #:local-domains"
  "anti-relay: #:local-domains expects a list of domains such as (\"example.test\" \".example.test\"), got \"example.test\""
  (anti-relay #:local-domains "example.test"))
(test-config-error "anti-relay #:local-domains with an address"
  "anti-relay: #:local-domains expects a list of domains such as (\"example.test\" \".example.test\"), got (\"postmaster@example.test\")"
  (anti-relay #:local-domains '("postmaster@example.test")))
(test-config-error "anti-relay #:trusted-networks"
  "anti-relay: #:trusted-networks: invalid network \"lan\": \"lan\" is not an IPv4 or IPv6 address"
  (anti-relay #:trusted-networks '("lan")))
(test-config-error "anti-relay #:authenticated? of two arguments"
  "anti-relay: #:authenticated? expects a procedure taking the session, such as (lambda (s) #f), got #t"
  (anti-relay #:authenticated? #t))
(test-assert "anti-relay #:authenticated? taking two arguments is refused"
  (string-prefix? "anti-relay: #:authenticated? expects a procedure taking the session"
                  (config-error-of (anti-relay #:authenticated? (lambda (a b) #t)))))
(test-config-error "limits #:window"
  "limits: #:window expects a number of seconds, more than 0, got 0"
  (limits #:window 0))
(test-config-error "limits #:max-connections-per-window"
  "limits: #:max-connections-per-window expects a number of connections, 1 or more, or #f for no limit, got 2.5"
  (limits #:max-connections-per-window 2.5))
(test-config-error "limits #:max-messages-per-window"
  "limits: #:max-messages-per-window expects a number of messages, 1 or more, or #f for no limit, got 0"
  (limits #:max-messages-per-window 0))
(test-config-error "headers #:required with a colon"
  "headers: #:required expects a list of header field names such as (\"From\" \"Date\"), got (\"From:\")"
  (headers #:required '("From:")))
(test-config-error "headers #:max-header-size"
  "headers: #:max-header-size expects a number of bytes, 1 or more, or #f for no limit, got \"100k\""
  (headers #:max-header-size "100k"))

(test-end "argument errors")


(test-begin "client networks")

(test-equal "IPv4 /24" "192.0.2.0/24" (client-network "192.0.2.77" 24 64))
(test-equal "IPv4 /32" "192.0.2.77/32" (client-network "192.0.2.77" 32 64))
(test-equal "IPv6 /64" "2001:db8:1:2::/64" (client-network "2001:db8:1:2:3:4:5:6" 24 64))
(test-equal "IPv6 /128" "2001:db8::1/128" (client-network "2001:DB8::1" 24 128))
(test-equal "IPv4-mapped counts as IPv4" "192.0.2.0/24" (client-network "::ffff:192.0.2.9" 24 64))
(test-equal "not an address: itself" "unix" (client-network "unix" 24 64))

(test-end "client networks")


(test-begin "dnsbl names")

(define dnsbl-name (@@ (guillemot rules dnsbl) dnsbl-name))

(test-equal "IPv4 reversed" "1.2.0.192.zen.example" (dnsbl-name "192.0.2.1" "zen.example"))
(test-equal "IPv4 with three-digit octets" "254.100.51.198.zen.example"
  (dnsbl-name "198.51.100.254" "zen.example"))
(test-equal "IPv6 as 32 reversed nibbles (RFC 5782 §2.4)"
  "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example"
  (dnsbl-name "2001:db8::1" "zen.example"))
(test-equal "IPv6 upper case, all nibbles"
  "f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.0.zen.example"
  (dnsbl-name "0123:4567:89AB:CDEF:0123:4567:89ab:cdef" "zen.example"))
(test-equal "IPv4-mapped IPv6 is asked as IPv4" "1.2.0.192.zen.example"
  (dnsbl-name "::ffff:192.0.2.1" "zen.example"))
(test-equal "not an address: nothing to ask" #f (dnsbl-name "localhost" "zen.example"))

(test-end "dnsbl names")


(test-begin "greylist decisions")

(define greylist-step (@@ (guillemot rules greylist) greylist-step))
(define (step entry at)
  (call-with-values (lambda () (greylist-step entry at 300 14400 3110400)) list))

(test-equal "unknown: new, pending until expire" '(new (pending 1000) 15400) (step #f 1000))
(test-equal "retry too early: early, nothing stored" '(early #f 15400) (step '(pending 1000) 1299))
(test-equal "retry at exactly #:delay: passed" '(passed (passed 1300) 3111700)
  (step '(pending 1000) 1300))
(test-equal "retry at exactly #:expire: passed" '(passed (passed 15400) 3125800)
  (step '(pending 1000) 15400))
(test-equal "retry after #:expire: new again" '(new (pending 15401) 29801)
  (step '(pending 1000) 15401))
(test-equal "known triplet: refreshed" '(known (passed 5000) 3115400) (step '(passed 2000) 5000))
(test-equal "known triplet, forgotten after #:remember" '(new (pending 3200001) 3214401)
  (step '(passed 2000) 3200001))
(test-equal "clock went back: new" '(new (pending 500) 14900) (step '(pending 1000) 500))
(test-equal "an entry a store mangled: new" '(new (pending 1000) 15400) (step '(garbage) 1000))
(test-equal "keys: network, sender and recipient, lower-cased and quoted"
  "192.0.2.0/24 \"a@origin.test\" \"b@example.test\""
  ((@@ (guillemot rules greylist) greylist-key) "192.0.2.0/24" "A@Origin.TEST" "b@example.test"))

(test-end "greylist decisions")


(test-begin "greylist memory store")

(let* ((store (make-memory-greylist-store #:clock clock #:prune-interval 100 #:max-entries 2))
       (get (greylist-store-get store))
       (put! (greylist-store-put! store)))
  (test-assert "a store" (greylist-store? store))
  (test-equal "nothing at first" #f (get "k1"))
  (put! "k1" '(pending 1) (+ now 50))
  (test-equal "an entry stored" '(pending 1) (get "k1"))
  (put! "k1" '(passed 2) (+ now 50))
  (test-equal "an entry replaced" '(passed 2) (get "k1"))
  (put! "k2" '(pending 3) (+ now 10))
  (put! "k3" '(pending 4) (+ now 10))
  (test-equal "full at #:max-entries: a new key is not stored" #f (get "k3"))
  (put! "k1" '(passed 5) (+ now 50))
  (test-equal "full: a known key is still updated" '(passed 5) (get "k1"))
  (advance! 11)
  (test-equal "expired: forgotten at once" #f (get "k2"))
  (put! "k3" '(pending 6) (+ now 10))
  (test-equal "full with expired entries: they are pruned, the new key is stored"
    '(pending 6) (get "k3"))
  (advance! 100)
  (test-equal "everything expired" '(#f #f) (list (get "k1") (get "k3")))
  (put! "k4" '(pending 7) (+ now 10))
  (put! "k5" '(pending 8) (+ now 10))
  (test-equal "room again after pruning" '((pending 7) (pending 8)) (list (get "k4") (get "k5"))))

(let* ((puts '())
       (store (make-greylist-store (lambda (key) #f)
                                  (lambda (key entry expires)
                                    (set! puts (cons (list key entry expires) puts)))))
       (rules (rules-added (lambda () (greylist #:store store #:clock clock)))))
  (test-equal "a store of one's own gets the key, the entry and its expiry"
    '(defer 451 "4.7.1 Greylisted, try again later")
    (run rules "greylist" (session "192.0.2.1" #:sender "a@origin.test") "b@example.test"))
  (test-equal "... as written"
    `(("192.0.2.0/24 \"a@origin.test\" \"b@example.test\"" (pending ,now) ,(+ now 14400)))
    puts))

(test-end "greylist memory store")


(test-begin "greylist rule")

(test-log-clear!)
(let* ((rules (rules-added (lambda ()
                             (greylist #:delay 300 #:clock clock
                                       #:exempt-networks '("127.0.0.0/8" "::1")))))
       (greylisted '(defer 451 "4.7.1 Greylisted, try again later"))
       (client (session "192.0.2.1" #:sender "a@origin.test"))
       (neighbour (session "192.0.2.200" #:sender "a@origin.test"))
       (other-net (session "198.51.100.1" #:sender "a@origin.test")))
  (test-equal "first attempt deferred" greylisted (run rules "greylist" client "b@example.test"))
  (test-equal "logged as new"
    '("greylist: new client=[192.0.2.1], from=<a@origin.test>, to=<b@example.test>")
    (test-log))
  (advance! 299)
  (test-equal "retry before #:delay deferred" greylisted
    (run rules "greylist" client "b@example.test"))
  (advance! 1)
  (test-equal "retry at #:delay passes" '(next) (run rules "greylist" client "b@example.test"))
  (test-equal "logged as passed"
    "greylist: passed client=[192.0.2.1], from=<a@origin.test>, to=<b@example.test>"
    (last (test-log)))
  (test-equal "another address of the /24 passes too" '(next)
    (run rules "greylist" neighbour "B@Example.test"))
  (test-equal "another network is greylisted" greylisted
    (run rules "greylist" other-net "b@example.test"))
  (test-equal "another recipient is greylisted" greylisted
    (run rules "greylist" client "c@example.test"))
  (test-equal "the null sender is a sender like any other" greylisted
    (run rules "greylist" (session "192.0.2.1" #:sender "") "b@example.test"))
  (test-equal "exempt networks are never greylisted" '((next) (next))
    (list (run rules "greylist" (session "127.0.0.1" #:sender "x@y.test") "b@example.test")
          (run rules "greylist" (session "::1" #:sender "x@y.test") "b@example.test")))
  (advance! (* 36 24 3600))
  (test-equal "still known 36 days after its last attempt" '(next)
    (run rules "greylist" client "b@example.test"))
  (advance! (1+ (* 36 24 3600)))
  (test-equal "forgotten after 36 days without an attempt" greylisted
    (run rules "greylist" client "b@example.test")))

(let ((rules (rules-added (lambda () (greylist #:delay 0 #:clock clock)))))
  (test-equal "#:delay 0: the first attempt is still deferred"
    '(defer 451 "4.7.1 Greylisted, try again later")
    (run rules "greylist" (session "2001:db8::1" #:sender "a@b.test") "c@d.test"))
  (test-equal "#:delay 0: any retry passes, from the same /64" '(next)
    (run rules "greylist" (session "2001:db8::ffff" #:sender "a@b.test") "c@d.test")))

(test-end "greylist rule")


(test-begin "limits counters")

(define make-counters (@@ (guillemot rules limits) make-counters))
(define counter-add! (@@ (guillemot rules limits) counter-add!))
(define counter-ref (@@ (guillemot rules limits) counter-ref))
(define counters-size (@@ (guillemot rules limits) counters-size))

(let ((c (make-counters 60 clock)))
  (test-equal "nothing counted" 0 (counter-ref c "a"))
  (test-equal "counting" '(1 2 3) (list (counter-add! c "a") (counter-add! c "a") (counter-add! c "a")))
  (test-equal "keys apart" 1 (counter-add! c "b"))
  (advance! 59)
  (test-equal "same window" '(3 4) (list (counter-ref c "a") (counter-add! c "a")))
  (advance! 1)
  (test-equal "window over: 0" 0 (counter-ref c "a"))
  (test-equal "a new window" 1 (counter-add! c "a"))
  (test-equal "the expired key is pruned" 1 (counters-size c))
  (advance! 30)
  (test-equal "the new window started at its first count" 2 (counter-add! c "a"))
  (advance! 30)
  (test-equal "and ended WINDOW seconds later" 1 (counter-add! c "a")))

(test-end "limits counters")


(test-begin "limits rules")

(let* ((rules (rules-added
               (lambda ()
                 (limits #:window 60 #:max-connections-per-window 2 #:max-messages-per-window 2
                         #:clock clock #:exempt-networks '("10.0.0.0/8")))))
       (a (session "192.0.2.1"))
       (too-many-conn '(defer 450 "4.7.1 Too many connections from [192.0.2.1], try again later"))
       (too-many-msg '(defer 450 "4.7.1 Too many messages from [192.0.2.1], try again later")))
  (test-equal "connections 1 and 2 pass, 3 and 4 are deferred"
    (list '(next) '(next) too-many-conn too-many-conn)
    (map (lambda (i) (run-stage rules 'connect a)) (iota 4)))
  (test-equal "another client has its own count" '(next)
    (run-stage rules 'connect (session "192.0.2.2")))
  (test-equal "an exempt client is never counted" '((next) (next) (next))
    (map (lambda (i) (run-stage rules 'connect (session "10.1.2.3"))) (iota 3)))
  (advance! 60)
  (test-equal "a new window: connections pass again" '(next) (run-stage rules 'connect a))
  (test-equal "messages 1 and 2: MAIL and data pass"
    '((next) (next) (next) (next))
    (list (run-stage rules 'mail a "x@y.test") (run-stage rules 'data a '())
          (run-stage rules 'mail a "x@y.test") (run-stage rules 'data a '())))
  (test-equal "the third MAIL is deferred" too-many-msg (run-stage rules 'mail a "x@y.test"))
  (test-equal "so is a message that passed MAIL before the count was reached" too-many-msg
    (run-stage rules 'data a '()))
  (advance! 60)
  (test-equal "a new window: MAIL passes" '(next) (run-stage rules 'mail a "x@y.test")))

(test-equal "#:max-connections-per-window #f: no connect rule"
  '((mail "limits messages") (data "limits messages"))
  (describe (rules-added (lambda () (limits #:max-connections-per-window #f)))))
(test-equal "IPv6 clients are counted per /64"
  '((next) (defer 450 "4.7.1 Too many connections from [2001:db8::2], try again later"))
  (let ((rules (rules-added (lambda () (limits #:max-connections-per-window 1 #:clock clock)))))
    (list (run-stage rules 'connect (session "2001:db8::1"))
          (run-stage rules 'connect (session "2001:db8::2")))))

(test-end "limits rules")


(test-begin "dnsbl rules")

;; A DNS of a table: NAME -> answer; every name asked is noted.
(define asked '())
(define (fake-lookup table)
  (lambda (name type)
    (set! asked (append asked (list (list name type))))
    (let ((answer (assoc name table)))
      (if answer (cdr answer) '()))))

(define dns-table
  '(("2.2.0.192.bl.example" "127.0.0.2")
    ("3.2.0.192.bl.example" "127.0.0.4" "127.0.0.10")
    ("4.2.0.192.bl.example" . timeout)
    ("5.2.0.192.bl.example" "127.255.255.254")
    ("6.2.0.192.bl.example" "192.0.2.1")
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example" "127.0.0.2")
    ("7.2.0.192.other.example" "127.0.0.3")))

(test-log-clear!)
(let ((rules (rules-added (lambda ()
                            (dnsbl #:zones '("bl.example" "Other.Example.")
                                   #:exempt-networks '("127.0.0.0/8")
                                   #:lookup (fake-lookup dns-table))))))
  (test-equal "one connect rule per zone, named after it"
    '((connect "dnsbl bl.example") (connect "dnsbl other.example"))
    (describe rules))
  (set! asked '())
  (test-equal "not listed anywhere: next" '(next) (run-stage rules 'connect (session "192.0.2.1")))
  (test-equal "every zone asked for an A record, in order"
    '(("1.2.0.192.bl.example" a) ("1.2.0.192.other.example" a))
    asked)
  (test-equal "listed: 554 naming the client and the zone"
    '(reject 554 "5.7.1 Service unavailable; client [192.0.2.2] blocked using bl.example")
    (run-stage rules 'connect (session "192.0.2.2")))
  (test-equal "a listing is logged with its answers"
    "dnsbl: client=[192.0.2.2] listed in bl.example: 127.0.0.2"
    (last (test-log)))
  (test-equal "several answers"
    '(reject 554 "5.7.1 Service unavailable; client [192.0.2.3] blocked using bl.example")
    (run-stage rules 'connect (session "192.0.2.3")))
  (test-equal "listed in the second zone"
    '(reject 554 "5.7.1 Service unavailable; client [192.0.2.7] blocked using other.example")
    (run-stage rules 'connect (session "192.0.2.7")))
  (test-equal "IPv6 client listed"
    '(reject 554 "5.7.1 Service unavailable; client [2001:db8::1] blocked using bl.example")
    (run-stage rules 'connect (session "2001:db8::1")))
  (test-log-clear!)
  (test-equal "timeout: fails open" '(next) (run-stage rules 'connect (session "192.0.2.4")))
  (test-equal "... and is logged" '("dnsbl: lookup of 4.2.0.192.bl.example failed: timeout")
    (test-log))
  (test-log-clear!)
  (test-equal "127.255.255.x (the zone refusing us) is a failure, not a listing" '(next)
    (run-stage rules 'connect (session "192.0.2.5")))
  (test-equal "... and is logged"
    '("dnsbl: lookup of 5.2.0.192.bl.example failed: the zone refused the query: 127.255.255.254")
    (test-log))
  (test-equal "an answer outside #:listed-networks is no listing" '(next)
    (run-stage rules 'connect (session "192.0.2.6")))
  (set! asked '())
  (test-equal "exempt client: not even asked" '((next) ())
    (list (run-stage rules 'connect (session "127.0.0.2")) asked)))

(let ((rules (rules-added (lambda ()
                            (dnsbl #:zones '("bl.example") #:on-failure 'defer
                                   #:lookup (fake-lookup dns-table))))))
  (test-equal "#:on-failure 'defer: 451 4.4.3"
    '(defer 451 "4.4.3 Service temporarily unavailable; bl.example could not be checked, try again later")
    (run-stage rules 'connect (session "192.0.2.4")))
  (test-equal "#:on-failure 'defer: a listing is still refused"
    '(reject 554 "5.7.1 Service unavailable; client [192.0.2.2] blocked using bl.example")
    (run-stage rules 'connect (session "192.0.2.2"))))

(let* ((rules (rules-added (lambda ()
                             (dnsbl #:zones '("bl.example") #:stage 'rcpt
                                    #:lookup (fake-lookup dns-table)))))
       (s (session "192.0.2.2"))
       (clean (session "192.0.2.1")))
  (set! asked '())
  (test-equal "#:stage 'rcpt: an rcpt rule" '((rcpt "dnsbl bl.example")) (describe rules))
  (test-equal "#:stage 'rcpt: each RCPT refused, the zone asked once per connection"
    '((reject 554 "5.7.1 Service unavailable; client [192.0.2.2] blocked using bl.example")
      (reject 554 "5.7.1 Service unavailable; client [192.0.2.2] blocked using bl.example")
      (next) (next)
      (("2.2.0.192.bl.example" a) ("1.2.0.192.bl.example" a)))
    (list (run-stage rules 'rcpt s "a@example.test")
          (run-stage rules 'rcpt s "b@example.test")
          (run-stage rules 'rcpt clean "a@example.test")
          (run-stage rules 'rcpt clean "b@example.test")
          asked))
  (set! asked '())
  (let ((failing (session "192.0.2.4")))
    (test-equal "#:stage 'rcpt: a failure is asked again at the next RCPT"
      '(("4.2.0.192.bl.example" a) ("4.2.0.192.bl.example" a))
      (begin (run-stage rules 'rcpt failing "a@example.test")
             (run-stage rules 'rcpt failing "b@example.test")
             asked))))

(test-assert "without (guillemot dns) in the server, a rule fails loudly"
  (let ((rules (rules-added (lambda () (dnsbl #:zones '("bl.example"))))))
    (catch #t
      (lambda ()
        (let ((dns (false-if-exception (resolve-interface '(guillemot dns)))))
          (if dns
              #t                        ; (guillemot dns) exists: it would suspend
              (begin (run-stage rules 'connect (session "192.0.2.1")) #f))))
      (lambda (key . args)
        (string-contains (format #f "~a" args) "(guillemot dns) is not available")))))

(test-end "dnsbl rules")


(test-begin "anti-relay rules")

(let ((rules (rules-added
              (lambda ()
                (anti-relay #:local-domains '("example.test" ".example.test")
                            #:trusted-networks '("192.0.2.0/24")
                            #:authenticated? (lambda (s) (session-ref s 'authenticated)))))))
  (define denied '(reject 554 "5.7.1 Relay access denied"))
  (define outsider (session "198.51.100.1"))
  (test-equal "a local domain" '(next) (run rules "anti-relay" outsider "a@example.test"))
  (test-equal "a local domain, any case, trailing dot" '(next)
    (run rules "anti-relay" outsider "a@EXAMPLE.Test."))
  (test-equal "a subdomain matched by a leading-dot pattern" '(next)
    (run rules "anti-relay" outsider "a@lists.example.test"))
  (test-equal "no domain (postmaster)" '(next) (run rules "anti-relay" outsider "postmaster"))
  (test-equal "another domain from outside" denied
    (run rules "anti-relay" outsider "a@elsewhere.test"))
  (test-equal "a domain that merely ends the same way" denied
    (run rules "anti-relay" outsider "a@badexample.test"))
  (test-equal "an address literal" denied (run rules "anti-relay" outsider "a@[192.0.2.1]"))
  (test-equal "another domain from a trusted network" '(next)
    (run rules "anti-relay" (session "192.0.2.9") "a@elsewhere.test"))
  (test-equal "another domain from an authenticated client" '(next)
    (let ((s (session "198.51.100.1")))
      (session-set! s 'authenticated #t)
      (run rules "anti-relay" s "a@elsewhere.test"))))

(test-equal "defaults: no local domain, loopback trusted"
  '((reject 554 "5.7.1 Relay access denied") (next) (next))
  (let ((rules (rules-added (lambda () (anti-relay)))))
    (list (run rules "anti-relay" (session "198.51.100.1") "a@example.test")
          (run rules "anti-relay" (session "127.0.0.1") "a@example.test")
          (run rules "anti-relay" (session "::1") "a@elsewhere.test"))))

(test-end "anti-relay rules")


(test-begin "headers rules")

(define header-section-size (@@ (guillemot rules headers) header-section-size))

(test-equal "size: NAME: VALUE CRLF per field, UTF-8 bytes" (+ 16 28)
  (header-section-size '(("From" . "a@b.test")               ; 4 + 2 + 8 + 2
                         ("Subject" . "Grüße aus Köln"))))   ; 7 + 2 + 17 + 2
(let ((rules (rules-added (lambda () (headers #:max-header-size 100))))
      (s (session "192.0.2.1")))
  (test-equal "From and Date present, any case: next" '(next)
    (run-stage rules 'data s '(("from" . "a@b.test") ("DATE" . "Mon, 1 Jan 2024 00:00:00 +0000"))))
  (test-equal "Date missing: 550 5.6.0 naming it"
    '(reject 550 "5.6.0 Message lacks the required header field Date")
    (run-stage rules 'data s '(("From" . "a@b.test") ("Subject" . "hi"))))
  (test-equal "nothing at all: the first missing one is named"
    '(reject 550 "5.6.0 Message lacks the required header field From")
    (run-stage rules 'data s '()))
  (test-equal "exactly #:max-header-size bytes: next" '(next)
    (run-stage rules 'data s `(("From" . "a@b.test") ("Date" . "now")
                               ("X-Pad" . ,(make-string (- 100 16 11 9) #\x)))))
  (test-equal "one byte more: 552 5.3.4"
    '(reject 552 "5.3.4 Message header section too big (101 bytes, at most 100)")
    (run-stage rules 'data s `(("From" . "a@b.test") ("Date" . "now")
                               ("X-Pad" . ,(make-string (- 101 16 11 9) #\x))))))

(test-equal "#:required '() and #:max-header-size #f: no rule" '()
  (rules-added (lambda () (headers #:required '() #:max-header-size #f))))
(test-equal "#:required of one's own"
  '(reject 550 "5.6.0 Message lacks the required header field Message-ID")
  (run-stage (rules-added (lambda () (headers #:required '("Message-ID"))))
             'data (session "192.0.2.1") '(("From" . "a@b.test"))))

(test-end "headers rules")


(test-end "rules")
