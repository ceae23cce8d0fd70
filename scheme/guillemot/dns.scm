;;; (guillemot dns) — DNS lookups from policy rules.
;;;
;;; A rule asks the DNS as if the answer were at hand:
;;;
;;;   (rule rcpt "listed clients"
;;;     (lambda (s rcpt)
;;;       (if (equal? (dns-lookup "blocked.example.test" 'a) '("127.0.0.2"))
;;;           (reject 554 "5.7.1 Listed")
;;;           (next))))
;;;
;;; but the session is suspended meanwhile ((guillemot)'s suspend): the
;;; server's resolver (src/dns.c, libunbound) works from the main loop and the
;;; rule goes on when the answer or dns-timeout comes.  Other sessions run as
;;; usual.  Only rules can wait: called elsewhere (at the top level of the
;;; configuration, at the REPL) a lookup is an error.
;;;
;;; The answer is a list (empty when the name does not exist or has no such
;;; record) or one of the symbols timeout and servfail, which dns-error?
;;; recognizes.  Mistakes in the arguments (a type that is not one of a,
;;; aaaa, mx, txt and ptr, a name that is neither a string nor #f) throw
;;; 'config-error; a string that cannot be a domain name, or #f, is not a
;;; mistake: names come from clients, and such a name exists nowhere, so the
;;; answer is '().
;;;
;;; (guillemot) re-exports this module, so it must not import (guillemot) at
;;; load time: suspend is looked up when a lookup is made, and so is the
;;; prompt of the rules, to tell a lookup made outside a rule.

(define-module (guillemot dns)
  #:use-module (srfi srfi-1)
  #:use-module ((ice-9 control) #:select (suspendable-continuation?))
  #:export (dns-lookup
            dns-reverse
            dns-error?))

(define (config-error message . args)
  (throw 'config-error (apply format #f message args)))

(define dns-types '(a aaaa mx txt ptr))

(define guillemot-suspend #f)           ; (guillemot)'s suspend and the prompt of
(define policy-prompt #f)               ; the rules, looked up at the first lookup

(define (suspend who operation . args)
  "(guillemot)'s suspend.  Outside a rule there is nothing to suspend: say
so rather than let Guile complain of an unknown prompt."
  (unless guillemot-suspend
    (set! policy-prompt (module-ref (resolve-module '(guillemot)) 'policy-prompt #f))
    (set! guillemot-suspend (module-ref (resolve-interface '(guillemot)) 'suspend)))
  (when (and policy-prompt (not (suspendable-continuation? policy-prompt)))
    (config-error "~a: only rules can wait for the DNS, and this call is not inside a rule"
                  who))
  (apply guillemot-suspend operation args))

(define (domain-name? name)
  "Can NAME (a string, without trailing dot) be a domain name: 1 to 253
characters, labels of 1 to 63, no white space, control characters or any of
@code{[]@@\\\"} (address literals, addresses, zone-file escapes)?"
  (and (<= 1 (string-length name) 253)
       (every (lambda (label) (<= 1 (string-length label) 63))
              (string-split name #\.))
       (string-every (lambda (c)
                       (let ((n (char->integer c)))
                         (and (> n 32) (not (= n 127)) (not (memv c '(#\[ #\] #\@ #\\ #\"))))))
                     name)))

(define (dns-lookup name type)
  "Look up the records of TYPE for the domain NAME and return them; the rule
waits for the answer without holding up other sessions.

@lisp
(dns-lookup \"blocked.example.test\" 'a)   @result{} (\"127.0.0.2\")
(dns-lookup \"example.test\" 'mx)          @result{} ((10 . \"mx1.example.test\") (20 . \"mx2.example.test\"))
(dns-lookup \"example.test\" 'txt)         @result{} (\"v=spf1 -all\")
(dns-lookup \"missing.example.test\" 'a)   @result{} ()
(dns-lookup \"slow.example.net\" 'a)       @result{} timeout
@end lisp

NAME is a string, with or without the trailing dot.  TYPE is one of the
symbols @code{a}, @code{aaaa}, @code{mx}, @code{txt} and @code{ptr}.  The
answer is a list: addresses as text for @code{a} and @code{aaaa};
@code{(PREFERENCE . HOST)} pairs, lowest preference first, for @code{mx};
one string per record for @code{txt}, its character-strings joined; host
names for @code{ptr}.  Host names are in lower case, without the trailing
dot.  The list is empty when the name does not exist or has no record of
TYPE, for a string that cannot be a domain name (such as an address
literal, @code{\"[192.0.2.1]\"}), and for @code{#f}, which
@code{address-domain} returns for the null sender: so names that clients
give can be passed as they are.  When the lookup
fails the answer is the symbol @code{timeout} (no answer within
@code{#:dns-timeout} seconds) or @code{servfail} (any other failure); test
it with @code{dns-error?}."
  (unless (or (string? name) (not name))
    (config-error "dns-lookup: expected a domain name string such as \"example.test\", got ~s"
                  name))
  (let ((known (and (symbol? type)
                    (let ((t (string->symbol (string-downcase (symbol->string type)))))
                      (and (memq t dns-types) t)))))
    (unless known
      (config-error "dns-lookup: unknown record type ~s: expected one of the symbols ~a"
                    type (string-join (map symbol->string dns-types) ", ")))
    (let ((bare (if (and name (> (string-length name) 1) (string-suffix? "." name))
                    (substring name 0 (1- (string-length name)))
                    name)))
      (if (and bare (domain-name? bare))
          (suspend 'dns-lookup 'dns bare known)
          '()))))

(define (reverse-name address)
  "The in-addr.arpa or ip6.arpa name of the IP address ADDRESS, or #f."
  (define (strip text)
    ;; Address literals of envelope domains: [192.0.2.1], [IPv6:2001:db8::1].
    (cond ((and (string-prefix? "[" text) (string-suffix? "]" text))
           (let ((inner (substring text 1 (1- (string-length text)))))
             (if (string-prefix-ci? "IPv6:" inner) (substring inner 5) inner)))
          (else text)))
  (define (parse family text)
    (false-if-exception (inet-pton family text)))
  (let* ((text (strip address))
         (v4 (and (not (string-index text #\:)) (parse AF_INET text)))
         (v6 (and (not v4) (string-index text #\:) (parse AF_INET6 text))))
    (cond
     (v4 (ipv4-reverse v4))
     ((and v6 (= (ash v6 -32) #xffff))   ; ::ffff:a.b.c.d is an IPv4 address
      (ipv4-reverse (logand v6 #xffffffff)))
     (v6
      (string-append
       (string-join (map (lambda (i) (number->string (logand (ash v6 (* -4 i)) 15) 16))
                         (iota 32))
                    ".")
       ".ip6.arpa"))
     (else #f))))

(define (ipv4-reverse n)
  (string-append
   (string-join (map (lambda (i) (number->string (logand (ash n (* -8 i)) 255))) (iota 4)) ".")
   ".in-addr.arpa"))

(define (dns-reverse address)
  "Look up the host names of the IP address ADDRESS (its PTR records) and
return them as @code{dns-lookup} does.

@lisp
(dns-reverse \"192.0.2.1\")        @result{} (\"mx.example.test\")
(dns-reverse \"2001:db8::25\")     @result{} (\"mx6.example.test\")
(dns-reverse (client-address s))
@end lisp

ADDRESS is an IPv4 or IPv6 address as text, as @code{client-address}
returns it, or an address literal such as @code{\"[192.0.2.1]\"} or
@code{\"[IPv6:2001:db8::25]\"}.  An IPv4-mapped IPv6 address
(@code{\"::ffff:192.0.2.1\"}) is looked up as its IPv4 address.  The name
asked is @code{1.2.0.192.in-addr.arpa} for @code{192.0.2.1}, and the 32
reversed nibbles under @code{ip6.arpa} for IPv6.  Anything else throws
@code{config-error}."
  (let ((name (and (string? address) (reverse-name address))))
    (unless name
      (config-error "dns-reverse: expected an IPv4 or IPv6 address such as \"192.0.2.1\", got ~s"
                    address))
    (suspend 'dns-reverse 'dns name 'ptr)))

(define (dns-error? value)
  "Return @code{#t} when VALUE, an answer of @code{dns-lookup} or
@code{dns-reverse}, says that the lookup failed (@code{timeout} or
@code{servfail}), and @code{#f} for a list of records, even an empty one.

@lisp
(let ((mx (dns-lookup (address-domain sender) 'mx)))
  (cond ((dns-error? mx) (defer 451 \"4.4.3 Cannot check your domain now\"))
        ((equal? mx '((0 . \".\")))      ; null MX, RFC 7505
         (reject 550 \"5.7.27 Your domain does not accept mail\"))
        (else (next))))
@end lisp"
  (and (memq value '(timeout servfail)) #t))
