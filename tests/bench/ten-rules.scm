;;; ten-rules.scm — a ten-rule policy for make bench
;;; (BENCH_CONFIGS="none tests/bench/ten-rules.scm"): two rules at each stage, of
;;; the kinds real sites use, none of which refuses smtp-source's traffic.

(use-modules (guillemot))
(define-server #:hostname "bench.example.test" #:listen '("127.0.0.1:2525") #:state-dir "var" #:max-message-size 50000000)
(local-domains "example.test")
(deliver-local (maildir "mail/~a/Maildir"))
(define trusted (parse-cidr "192.0.2.0/24"))
(rule connect "not from test net" (lambda (s) (if (address-in? (client-address s) trusted) (reject 554 "5.7.1 no") (next))))
(rule helo "helo not numeric" (lambda (s h) (if (string=? h "1.2.3.4") (reject 550 "5.7.1 bad helo") (next))))
(rule mail "no bounce spam" (lambda (s from) (if (string=? from "spam@example.org") (reject 550 "5.7.1 no") (next))))
(rule mail "count" (lambda (s from) (session-set! s 'mails (1+ (session-ref s 'mails 0))) (next)))
(rule rcpt "blocked" (lambda (s r) (if (string=? r "blocked@example.test") (reject 550 "5.7.1 blocked") (next))))
(rule rcpt "domain" (lambda (s r) (if (domain-matches? (address-domain r) ".bad.test") (reject 550 "5.7.1 no") (next))))
(rule rcpt "limit" (lambda (s r) (if (> (length (recipients s)) 50) (defer 452 "4.5.3 too many") (next))))
(rule data "subject" (lambda (s msg) (if (member "spam" (header-ref msg "Subject")) (reject 550 "5.7.1 spam") (next))))
(rule data "size" (lambda (s msg) (if (> (message-size s) 40000000) (reject 552 "5.3.4 big") (next))))
(rule data "tag" (lambda (s msg) (header-add! msg "X-Guillemot-Policy" "checked") (next)))
