;;; (guillemot address) — envelope addresses, domains and networks in rules.
;;;
;;; Pure Scheme helpers for policy rules: split an envelope address into its
;;; local part and domain (RFC 5321 §4.1.2, quoted local parts included),
;;; match a domain against a domain or a subdomain pattern, and test a client
;;; IP address against CIDR networks, IPv4 and IPv6 (RFC 4291 §2.5.5.2 for
;;; IPv4-mapped addresses, RFC 5321 §4.1.3 for address literals).
;;;
;;; Networks given as text are checked every time; a rule that tests many
;;; addresses parses its networks once, when the configuration is loaded:
;;;
;;;   (define trusted (map parse-cidr '("10.0.0.0/8" "2001:db8::/32")))
;;;   ... (address-in-any? (client-address s) trusted) ...
;;;
;;; Mistakes in the configuration (a network that is not one, a value of the
;;; wrong type) throw 'config-error with a message naming the procedure and
;;; the bad argument, which the loader reports as FILE:LINE:COLUMN.

(define-module (guillemot address)
  #:use-module (srfi srfi-9)
  #:use-module (srfi srfi-9 gnu)
  #:export (address-local
            address-domain
            domain-matches?
            parse-cidr
            cidr?
            cidr->string
            address-in?
            address-in-any?))

(define (config-error message . args)
  (throw 'config-error (apply format #f message args)))


;;; Envelope addresses.

(define (check-address who address)
  (unless (string? address)
    (config-error "~a: expected an address string such as \"user@example.test\", got ~s"
                  who address)))

;; The index of the last "@" outside a quoted string, or #f.  Inside quotes
;; a backslash escapes the next character (RFC 5321 quoted-pairSMTP).
(define (last-at address)
  (let ((end (string-length address)))
    (let loop ((i 0) (quoted? #f) (found #f))
      (if (>= i end)
          found
          (let ((c (string-ref address i)))
            (cond (quoted?
                   (case c
                     ((#\\) (loop (+ i 2) #t found))
                     ((#\") (loop (1+ i) #f found))
                     (else (loop (1+ i) #t found))))
                  ((char=? c #\") (loop (1+ i) #t found))
                  ((char=? c #\@) (loop (1+ i) #f i))
                  (else (loop (1+ i) #f found))))))))

(define (address-local address)
  "Return the local part of the envelope address ADDRESS, as written:
everything before the last @samp{@@} that is outside a quoted local part, or
the whole string when there is no domain.

@example
(address-local \"Joe.Bloggs@@Example.TEST\")  @result{} \"Joe.Bloggs\"
(address-local \"\\\"a@@b\\\"@@example.test\")  @result{} \"\\\"a@@b\\\"\"
(address-local \"postmaster\")              @result{} \"postmaster\"
(address-local \"\")                        @result{} \"\"
@end example"
  (check-address 'address-local address)
  (let ((at (last-at address)))
    (if at (substring address 0 at) address)))

(define (address-domain address)
  "Return the domain of the envelope address ADDRESS, lower-cased: what
follows the last @samp{@@} that is outside a quoted local part.  Return
@code{#f} for an address without a domain, such as @code{\"postmaster\"} or
the null sender @code{\"\"}.

@example
(address-domain \"Joe@@Example.TEST\")        @result{} \"example.test\"
(address-domain \"\\\"a@@b\\\"@@example.test\")  @result{} \"example.test\"
(address-domain \"joe@@[IPv6:2001:DB8::1]\")  @result{} \"[ipv6:2001:db8::1]\"
(address-domain \"postmaster\")              @result{} #f
(address-domain \"\")                        @result{} #f
@end example"
  (check-address 'address-domain address)
  (let ((at (last-at address)))
    (and at
         (< (1+ at) (string-length address))
         (string-downcase (substring address (1+ at))))))


;;; Domains.

(define (strip-trailing-dots text)
  (string-trim-right text #\.))

(define (domain-matches? domain pattern)
  "Return true when DOMAIN matches PATTERN, ignoring case and trailing dots.
A PATTERN such as @code{\"example.test\"} matches exactly that domain; a
PATTERN with a leading dot, such as @code{\".example.test\"}, matches every
subdomain of @code{example.test} at any depth but not @code{example.test}
itself.  DOMAIN may be @code{#f} (what @code{address-domain} returns for an
address without a domain), which matches nothing.

@example
(domain-matches? \"Example.TEST.\" \"example.test\")       @result{} #t
(domain-matches? \"b.a.example.test\" \".example.test\")   @result{} #t
(domain-matches? \"example.test\" \".example.test\")       @result{} #f
(domain-matches? (address-domain rcpt) \".example.test\")
@end example"
  (unless (or (not domain) (string? domain))
    (config-error "domain-matches?: expected a domain string or #f, got ~s" domain))
  (unless (string? pattern)
    (config-error "domain-matches?: expected a pattern string such as \"example.test\" or \".example.test\", got ~s"
                  pattern))
  (let ((pattern* (strip-trailing-dots pattern)))
    (when (string-null? pattern*)
      (config-error "domain-matches?: empty domain pattern ~s" pattern))
    (and domain
         (let ((domain* (strip-trailing-dots domain)))
           (if (char=? (string-ref pattern* 0) #\.)
               (and (> (string-length domain*) (string-length pattern*))
                    (string-suffix-ci? pattern* domain*))
               (string-ci=? pattern* domain*))))))


;;; IP addresses and networks.

;; An address is a pair (FAMILY . INTEGER), FAMILY AF_INET or AF_INET6.

(define (family-width family)
  (if (= family AF_INET) 32 128))

;; TEXT without the brackets of an address literal, and the family the
;; literal's tag requires (AF_INET6 for "[IPv6:...]"), or #f.
(define (unbracket text)
  (let ((end (string-length text)))
    (if (and (>= end 2)
             (char=? (string-ref text 0) #\[)
             (char=? (string-ref text (1- end)) #\]))
        (let ((inner (substring text 1 (1- end))))
          (if (string-prefix-ci? "IPv6:" inner)
              (values (substring inner 5) AF_INET6)
              (values inner #f)))
        (values text #f))))

;; Parse "192.0.2.1", "2001:db8::1", "[192.0.2.1]", "[IPv6:2001:db8::1]" or
;; "[::1]" into (FAMILY . INTEGER); #f when TEXT is none of these.
(define (parse-ip text)
  (call-with-values (lambda () (unbracket text))
    (lambda (bare required)
      (let ((family (if (or required (string-index bare #\:)) AF_INET6 AF_INET)))
        (catch 'misc-error
          (lambda () (cons family (inet-pton family bare)))
          (lambda _ #f))))))

(define (ipv4-mapped? address)
  (and (= (car address) AF_INET6)
       (= (ash (cdr address) -32) #xffff)))

(define-record-type <cidr>
  (make-cidr family prefix shift network)
  cidr?
  (family cidr-family)                  ; AF_INET or AF_INET6
  (prefix cidr-prefix)                  ; prefix length in bits
  (shift cidr-shift)                    ; host bits: width - prefix
  (network cidr-network))               ; the address's top PREFIX bits

(define (cidr->string cidr)
  "Return the network CIDR (a value from @code{parse-cidr}) as text.

@example
(cidr->string (parse-cidr \"2001:DB8::/32\"))  @result{} \"2001:db8::/32\"
@end example"
  (unless (cidr? cidr)
    (config-error "cidr->string: expected a network from parse-cidr, got ~s" cidr))
  (format #f "~a/~a"
          (inet-ntop (cidr-family cidr) (ash (cidr-network cidr) (cidr-shift cidr)))
          (cidr-prefix cidr)))

(set-record-type-printer! <cidr>
  (lambda (cidr port)
    (format port "#<cidr ~a>" (cidr->string cidr))))

(define (digits? text)
  (and (not (string-null? text))
       (string-every (lambda (c) (and (char>=? c #\0) (char<=? c #\9))) text)))

;; Parse TEXT as a network for the procedure WHO; a parsed network is
;; returned as it is.
(define (->cidr who text)
  (cond
   ((cidr? text) text)
   ((not (string? text))
    (config-error "~a: expected a network such as \"192.0.2.0/24\" or \"2001:db8::/32\", got ~s"
                  who text))
   (else
    (let* ((slash (string-index text #\/))
           (address (parse-ip (if slash (substring text 0 slash) text)))
           (length-text (and slash (substring text (1+ slash)))))
      (unless address
        (config-error "~a: invalid network ~s: ~s is not an IPv4 or IPv6 address"
                      who text (if slash (substring text 0 slash) text)))
      (let* ((family (car address))
             (width (family-width family)))
        (when (and length-text (not (digits? length-text)))
          (config-error "~a: invalid network ~s: prefix length ~s is not a number from 0 to ~a"
                        who text length-text width))
        (let ((prefix (if length-text (string->number length-text 10) width)))
          (when (> prefix width)
            (config-error "~a: invalid network ~s: prefix length ~a is more than ~a"
                          who text prefix width))
          (let* ((shift (- width prefix))
                 (network (ash (cdr address) (- shift))))
            (unless (= (ash network shift) (cdr address))
              (config-error "~a: invalid network ~s: bits after the first ~a are set (did you mean \"~a/~a\"?)"
                            who text prefix (inet-ntop family (ash network shift)) prefix))
            (make-cidr family prefix shift network))))))))

(define (parse-cidr text)
  "Parse TEXT, a network such as @code{\"192.0.2.0/24\"} or
@code{\"2001:db8::/32\"}, or a single address (the same as @code{/32} or
@code{/128}), into a value that @code{address-in?} and
@code{address-in-any?} accept in place of the text, without parsing it
again.  Throw @code{config-error} for text that is not a network: a bad
address, a prefix length that is not a number or is too large, or address
bits set after the prefix (@code{\"192.0.2.1/24\"}).

@example
(define trusted (map parse-cidr '(\"10.0.0.0/8\" \"2001:db8::/32\" \"192.0.2.7\")))
(address-in-any? \"10.1.2.3\" trusted)  @result{} #t
@end example"
  (->cidr 'parse-cidr text))

;; Parse the IP argument of WHO: #f for #f or for text that is not an IP
;; address (such an address is in no network).
(define (->ip who ip)
  (cond ((not ip) #f)
        ((string? ip) (parse-ip ip))
        (else (config-error "~a: expected an IP address string such as \"192.0.2.1\", got ~s"
                            who ip))))

(define (ip-in-cidr? address cidr)
  (let ((family (cidr-family cidr))
        (shift (cidr-shift cidr))
        (network (cidr-network cidr)))
    (cond ((= family (car address))
           (= (ash (cdr address) (- shift)) network))
          ((and (= family AF_INET) (ipv4-mapped? address))
           (= (ash (logand (cdr address) #xffffffff) (- shift)) network))
          (else #f))))

(define (address-in? ip cidr)
  "Return true when the IP address IP is in the network CIDR.  IP is text
such as @code{\"192.0.2.1\"} or @code{\"2001:db8::1\"}, or an address literal
such as @code{\"[192.0.2.1]\"} or @code{\"[IPv6:2001:db8::1]\"}; @code{#f} or
text that is not an IP address is in no network.  CIDR is text such as
@code{\"192.0.2.0/24\"}, @code{\"2001:db8::/32\"} or a single address, or a
value from @code{parse-cidr}.  An IPv4 address is never in an IPv6 network,
but an IPv4-mapped IPv6 address (@code{\"::ffff:192.0.2.1\"}) is in the IPv4
networks that hold its IPv4 address.  Invalid CIDR text throws
@code{config-error}.

@example
(address-in? \"192.0.2.1\" \"192.0.2.0/24\")          @result{} #t
(address-in? \"[IPv6:2001:db8::1]\" \"2001:db8::/32\") @result{} #t
(address-in? \"::ffff:192.0.2.1\" \"192.0.2.0/24\")   @result{} #t
(address-in? \"192.0.2.1\" \"::/0\")                   @result{} #f
@end example"
  (let ((cidr (->cidr 'address-in? cidr))
        (address (->ip 'address-in? ip)))
    (and address (ip-in-cidr? address cidr))))

(define (address-in-any? ip cidrs)
  "Return true when the IP address IP is in at least one of the networks of
the list CIDRS, each text or a value from @code{parse-cidr}; see
@code{address-in?}.  Every network of the list is checked, even after a
match, so that a mistake anywhere in it throws @code{config-error}.

@example
(address-in-any? \"10.1.2.3\" '(\"192.0.2.0/24\" \"10.0.0.0/8\"))  @result{} #t
(address-in-any? (client-address s) (map parse-cidr my-networks))
@end example"
  (unless (list? cidrs)
    (config-error "address-in-any?: expected a list of networks such as (\"192.0.2.0/24\"), got ~s"
                  cidrs))
  (let ((cidrs (map (lambda (cidr) (->cidr 'address-in-any? cidr)) cidrs))
        (address (->ip 'address-in-any? ip)))
    (and address
         (let loop ((cidrs cidrs))
           (and (pair? cidrs)
                (or (ip-in-cidr? address (car cidrs))
                    (loop (cdr cidrs))))))))
