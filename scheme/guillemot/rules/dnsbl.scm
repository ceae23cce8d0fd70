;;; (guillemot rules dnsbl) — DNS blocklists of client addresses.
;;;
;;; A DNS blocklist (RFC 5782) publishes the addresses it lists as names
;;; under its zone: 192.0.2.1 is listed in zen.example when
;;; 1.2.0.192.zen.example has an A record, usually 127.0.0.2 or a neighbour;
;;; an IPv6 address is written as its 32 nibbles, in reverse, like under
;;; ip6.arpa.  This module asks each zone in turn through (guillemot dns),
;;; which suspends the session while it waits, and refuses a listed client:
;;;
;;;   (use-modules (guillemot rules dnsbl))
;;;   (dnsbl #:zones '("zen.spamhaus.org")
;;;          #:exempt-networks '("127.0.0.0/8" "::1"))
;;;
;;; A zone that cannot be asked (a timeout, a server failure) does not stop
;;; mail: the rule fails open, unless told to defer.  (guillemot dns) is
;;; looked up when a rule runs, not when this module is loaded.

(define-module (guillemot rules dnsbl)
  #:use-module (srfi srfi-1)
  #:use-module ((guillemot) #:select (rule next reject defer log-message client-address
                                      session-ref session-set! address-in-any?))
  #:use-module (guillemot rules common)
  #:export (dnsbl))

;; ADDRESS (text) as RFC 5782 writes it under a zone: "1.2.0.192" for
;; 192.0.2.1, 32 reversed nibbles for IPv6; an IPv4-mapped IPv6 address is
;; its IPv4 address.  #f when ADDRESS is not an IP address.
(define (reversed-address address)
  (let* ((v6? (and (string? address) (string-index address #\:)))
         (n (and (string? address)
                 (false-if-exception (inet-pton (if v6? AF_INET6 AF_INET) address)))))
    (define (ipv4 n)
      (string-join (map (lambda (i) (number->string (logand (ash n (* -8 i)) 255))) (iota 4))
                   "."))
    (cond ((not n) #f)
          ((not v6?) (ipv4 n))
          ((= (ash n -32) #xffff) (ipv4 (logand n #xffffffff)))
          (else (string-join (map (lambda (i) (number->string (logand (ash n (* -4 i)) 15) 16))
                                  (iota 32))
                             ".")))))

(define (dnsbl-name address zone)
  "The name to look up for ADDRESS in ZONE, or #f when ADDRESS is not an IP
address."
  (let ((reversed (reversed-address address)))
    (and reversed (string-append reversed "." zone))))

;; The default #:lookup: (guillemot dns)'s dns-lookup, found when a rule
;; runs, so that this module loads on a server without it.
(define (lookup-with-guillemot-dns name type)
  (let ((dns (false-if-exception (resolve-interface '(guillemot dns)))))
    (unless dns
      (error "dnsbl: (guillemot dns) is not available in this server"))
    ((module-ref dns 'dns-lookup) name type)))

(define (zone-name? x)
  (and (string? x)
       (let ((bare (string-trim-right x #\.)))
         (and (not (string-null? bare))
              (not (string-prefix? "." bare))
              (string-every (lambda (c) (or (char-alphabetic? c) (char-numeric? c)
                                            (memv c '(#\- #\. #\_))))
                            bare)))))

(define-rules (dnsbl
               (zones '())
               (exempt-networks '())
               (listed-networks '("127.0.0.0/8"))
               (error-networks '("127.255.255.0/24"))
               (on-failure 'next)
               (stage 'connect)
               (lookup lookup-with-guillemot-dns))
  "Add one rule per zone of @var{zones}, named @code{\"dnsbl @var{zone}\"},
at @var{stage} (@code{connect}, @code{mail} or @code{rcpt}), that looks up
the client's address under the zone.  A client whose answer holds an
address in @var{listed-networks} is refused with @samp{554 5.7.1 Service
unavailable; client [@var{ip}] blocked using @var{zone}}.  A failed lookup,
or an answer in @var{error-networks} (the zone refusing to answer us),
is logged and answers @code{(next)}, or with @var{on-failure} @code{'defer}
@samp{451 4.4.3}.  Clients in @var{exempt-networks} are not looked up.
@var{lookup}, a procedure taking a name and a record type, replaces
@code{dns-lookup} (tests, another resolver)."
  (check-argument 'dnsbl #:zones zones
                  (lambda (x) (and (list? x) (pair? x) (every zone-name? x)))
                  "a non-empty list of DNS zones such as (\"zen.spamhaus.org\")")
  (check-argument 'dnsbl #:on-failure on-failure (lambda (x) (memq x '(next defer)))
                  "'next (let the client in) or 'defer (451 4.4.3)")
  (check-argument 'dnsbl #:stage stage (lambda (x) (memq x '(connect mail rcpt)))
                  "'connect, 'mail or 'rcpt")
  (check-argument 'dnsbl #:lookup lookup (procedure-taking? 2)
                  "a procedure taking a name and a record type, such as dns-lookup")
  (let ((exempt (parse-networks 'dnsbl #:exempt-networks exempt-networks))
        (listed (parse-networks 'dnsbl #:listed-networks listed-networks))
        (refusals (parse-networks 'dnsbl #:error-networks error-networks)))
    (for-each
     (lambda (zone)
       (let* ((zone (string-downcase (string-trim-right zone #\.)))
              (name (string-append "dnsbl " zone))
              (check (make-check zone exempt listed refusals on-failure lookup)))
         (case stage
           ((connect) (rule connect name (lambda (s) (check s))))
           ((mail) (rule mail name (lambda (s sender) (check s))))
           ((rcpt) (rule rcpt name (lambda (s rcpt) (check s)))))))
     zones)))

;; What ZONE says about ADDRESS: 'listed, 'clear or 'failed, and a text for
;; the log.
(define (classify answer listed refusals)
  (cond ((not (list? answer))           ; timeout, servfail
         (values 'failed (format #f "~a" answer)))
        ((null? answer) (values 'clear ""))
        ((any (lambda (a) (address-in-any? a refusals)) answer)
         (values 'failed (format #f "the zone refused the query: ~a" (string-join answer " "))))
        ((any (lambda (a) (address-in-any? a listed)) answer)
         (values 'listed (string-join answer " ")))
        (else (values 'clear ""))))

(define (make-check zone exempt listed refusals on-failure lookup)
  (define key (cons 'dnsbl zone))       ; the answer, kept for the connection
  (lambda (s)
    (let* ((ip (client-address s))
           (name (and (not (client-in? ip exempt)) (dnsbl-name ip zone))))
      (if (not name)
          (next)
          (let* ((known (session-ref s key))
                 (outcome (or known
                              (call-with-values
                                  (lambda () (classify (lookup name 'a) listed refusals))
                                (lambda (verdict detail)
                                  (case verdict
                                    ((listed)
                                     (log-message s "dnsbl: client=[~a] listed in ~a: ~a"
                                                  ip zone detail))
                                    ((failed)
                                     (log-message s "dnsbl: lookup of ~a failed: ~a"
                                                  name detail)))
                                  verdict)))))
            ;; A failure is asked again at the next command; an answer is not.
            (unless (or known (eq? outcome 'failed))
              (session-set! s key outcome))
            (case outcome
              ((listed)
               (reject 554 (format #f "5.7.1 Service unavailable; client [~a] blocked using ~a"
                                   ip zone)))
              ((failed)
               (if (eq? on-failure 'defer)
                   (defer 451 (format #f "4.4.3 Service temporarily unavailable; ~a could not be checked, try again later"
                                      zone))
                   (next)))
              (else (next))))))))
