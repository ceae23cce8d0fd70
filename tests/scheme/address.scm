;;; tests/scheme/address.scm — (guillemot address): envelope addresses,
;;; domain patterns and CIDR networks.  Run by tests/scheme/run-srfi64, or
;;; alone: guile -L scheme --no-auto-compile -s tests/scheme/address.scm

(use-modules (srfi srfi-64)
             (guillemot address)
             (guillemot config))

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

(test-begin "address")


(test-begin "address-local and address-domain")

(define-syntax test-split
  (syntax-rules ()
    ((_ name address local domain)
     (test-equal name (list local domain)
       (list (address-local address) (address-domain address))))))

(test-split "plain address" "user@example.test" "user" "example.test")
(test-split "domain lower-cased, local part as written"
            "Joe.Bloggs@EXAMPLE.Test" "Joe.Bloggs" "example.test")
(test-split "@ inside a quoted local part"
            "\"a@b\"@example.test" "\"a@b\"" "example.test")
(test-split "quoted local part with an escaped quote and @"
            "\"a\\\"@b\"@example.test" "\"a\\\"@b\"" "example.test")
(test-split "quoted local part ending in an escaped backslash"
            "\"a\\\\\"@example.test" "\"a\\\\\"" "example.test")
(test-split "quoted local part with spaces"
            "\"John Doe\"@Example.TEST" "\"John Doe\"" "example.test")
(test-split "quoted local part only: no domain" "\"a@b\"" "\"a@b\"" #f)
(test-split "unterminated quote: no domain" "\"a@b" "\"a@b" #f)
(test-split "split at the last unquoted @" "a@b@example.test" "a@b" "example.test")
(test-split "no domain" "postmaster" "postmaster" #f)
(test-split "null sender" "" "" #f)
(test-split "empty domain after @" "user@" "user" #f)
(test-split "empty local part" "@example.test" "" "example.test")
(test-split "IPv4 address literal" "joe@[192.0.2.1]" "joe" "[192.0.2.1]")
(test-split "IPv6 address literal lower-cased"
            "joe@[IPv6:2001:DB8::1]" "joe" "[ipv6:2001:db8::1]")
(test-split "trailing dot kept" "a@Example.Test." "a" "example.test.")
(test-split "UTF-8 (RFC 6531)" "Jürgen@BÜCHER.example" "Jürgen" "bücher.example")

(test-config-error "address-domain of a symbol"
  "address-domain: expected an address string such as \"user@example.test\", got x"
  (address-domain 'x))
(test-config-error "address-local of #f"
  "address-local: expected an address string such as \"user@example.test\", got #f"
  (address-local #f))

(test-end "address-local and address-domain")


(test-begin "domain-matches?")

(test-assert "exact" (domain-matches? "example.test" "example.test"))
(test-assert "exact ignores case" (domain-matches? "EXAMPLE.test" "Example.TEST"))
(test-assert "exact ignores trailing dots"
  (and (domain-matches? "example.test." "example.test")
       (domain-matches? "example.test" "example.test.")
       (domain-matches? "example.test.." "example.test.")))
(test-equal "exact does not match a subdomain" #f
  (domain-matches? "a.example.test" "example.test"))
(test-equal "exact does not match a longer name" #f
  (domain-matches? "badexample.test" "example.test"))
(test-equal "exact does not match a shorter name" #f
  (domain-matches? "example.test" "mail.example.test"))
(test-assert "subdomain pattern: one level"
  (domain-matches? "a.example.test" ".example.test"))
(test-assert "subdomain pattern: two levels"
  (domain-matches? "b.a.example.test" ".example.test"))
(test-assert "subdomain pattern ignores case and trailing dots"
  (domain-matches? "A.Example.TEST." ".example.test."))
(test-equal "subdomain pattern does not match the domain itself" #f
  (domain-matches? "example.test" ".example.test"))
(test-equal "subdomain pattern does not match the domain itself with a trailing dot" #f
  (domain-matches? "example.test." ".example.test"))
(test-equal "subdomain pattern needs a label boundary" #f
  (domain-matches? "badexample.test" ".example.test"))
(test-equal "subdomain pattern does not match a parent" #f
  (domain-matches? "test" ".example.test"))
(test-equal "domain #f matches nothing" '(#f #f)
  (list (domain-matches? #f "example.test") (domain-matches? #f ".example.test")))
(test-equal "empty domain matches nothing" '(#f #f)
  (list (domain-matches? "" "example.test") (domain-matches? "" ".example.test")))
(test-assert "with address-domain"
  (and (domain-matches? (address-domain "joe@Mail.Example.TEST") ".example.test")
       (not (domain-matches? (address-domain "postmaster") "example.test"))
       (not (domain-matches? (address-domain "") ".example.test"))))

(test-config-error "empty pattern"
  "domain-matches?: empty domain pattern \"\""
  (domain-matches? "example.test" ""))
(test-config-error "pattern of dots only"
  "domain-matches?: empty domain pattern \".\""
  (domain-matches? "example.test" "."))
(test-config-error "pattern not a string"
  "domain-matches?: expected a pattern string such as \"example.test\" or \".example.test\", got example.test"
  (domain-matches? "example.test" 'example.test))
(test-config-error "domain not a string"
  "domain-matches?: expected a domain string or #f, got 42"
  (domain-matches? 42 "example.test"))
(test-config-error "bad pattern is an error even for domain #f"
  "domain-matches?: empty domain pattern \"\""
  (domain-matches? #f ""))

(test-end "domain-matches?")


(test-begin "address-in? IPv4")

(test-assert "inside a /24" (address-in? "192.0.2.1" "192.0.2.0/24"))
(test-assert "first and last of a /24"
  (and (address-in? "192.0.2.0" "192.0.2.0/24")
       (address-in? "192.0.2.255" "192.0.2.0/24")))
(test-equal "just outside a /24" '(#f #f)
  (list (address-in? "192.0.1.255" "192.0.2.0/24")
        (address-in? "192.0.3.0" "192.0.2.0/24")))
(test-assert "/9 boundaries"
  (and (address-in? "10.127.255.255" "10.0.0.0/9")
       (not (address-in? "10.128.0.0" "10.0.0.0/9"))))
(test-assert "/1"
  (and (address-in? "200.1.1.1" "128.0.0.0/1")
       (not (address-in? "127.255.255.255" "128.0.0.0/1"))))
(test-assert "/32 explicit"
  (and (address-in? "192.0.2.7" "192.0.2.7/32")
       (not (address-in? "192.0.2.8" "192.0.2.7/32"))))
(test-assert "bare address is /32"
  (and (address-in? "192.0.2.7" "192.0.2.7")
       (not (address-in? "192.0.2.6" "192.0.2.7"))))
(test-assert "/0 holds every IPv4 address"
  (and (address-in? "0.0.0.0" "0.0.0.0/0")
       (address-in? "255.255.255.255" "0.0.0.0/0")
       (address-in? "192.0.2.1" "0.0.0.0/0")))
(test-equal "/0 holds no IPv6 address" '(#f #f)
  (list (address-in? "::1" "0.0.0.0/0") (address-in? "2001:db8::1" "0.0.0.0/0")))
(test-assert "address literal [192.0.2.1]"
  (address-in? "[192.0.2.1]" "192.0.2.0/24"))
(test-assert "prefix length with a leading zero"
  (address-in? "192.0.2.1" "192.0.2.0/024"))

(test-end "address-in? IPv4")


(test-begin "address-in? IPv6")

(test-assert "inside a /32" (address-in? "2001:db8::1" "2001:db8::/32"))
(test-equal "outside a /32" #f (address-in? "2001:db9::1" "2001:db8::/32"))
(test-assert "case of hex digits ignored"
  (and (address-in? "2001:DB8::1" "2001:db8::/32")
       (address-in? "2001:db8::1" "2001:DB8::/32")))
(test-assert "/64 boundaries"
  (and (address-in? "2001:db8:0:1:ffff:ffff:ffff:ffff" "2001:db8:0:1::/64")
       (address-in? "2001:db8:0:1::" "2001:db8:0:1::/64")
       (not (address-in? "2001:db8:0:2::" "2001:db8:0:1::/64"))
       (not (address-in? "2001:db8:0:0:ffff:ffff:ffff:ffff" "2001:db8:0:1::/64"))))
(test-assert "/128 explicit"
  (and (address-in? "::1" "::1/128") (not (address-in? "::2" "::1/128"))))
(test-assert "bare address is /128"
  (and (address-in? "0:0:0:0:0:0:0:1" "::1") (not (address-in? "::2" "::1"))))
(test-assert "/0 holds every IPv6 address"
  (and (address-in? "::" "::/0")
       (address-in? "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" "::/0")
       (address-in? "::ffff:192.0.2.1" "::/0")))
(test-equal "/0 holds no IPv4 address" #f (address-in? "192.0.2.1" "::/0"))
(test-assert "address literal [IPv6:...]"
  (address-in? "[IPv6:2001:db8::1]" "2001:db8::/32"))
(test-assert "address literal as address-domain returns it"
  (address-in? (address-domain "joe@[IPv6:2001:DB8::1]") "2001:db8::/32"))
(test-assert "bracketed [::1] without the tag" (address-in? "[::1]" "::1"))

(test-end "address-in? IPv6")


(test-begin "address-in? IPv4-mapped")

(test-assert "mapped address in an IPv4 network"
  (address-in? "::ffff:192.0.2.1" "192.0.2.0/24"))
(test-assert "mapped address in hex form"
  (address-in? "::ffff:c000:201" "192.0.2.1"))
(test-assert "mapped address literal"
  (address-in? "[IPv6:::ffff:192.0.2.1]" "192.0.2.0/24"))
(test-equal "mapped address outside the IPv4 network" #f
  (address-in? "::ffff:192.0.3.1" "192.0.2.0/24"))
(test-assert "mapped address in IPv4 /0"
  (address-in? "::ffff:1.2.3.4" "0.0.0.0/0"))
(test-assert "mapped address in an IPv6 network of mapped addresses"
  (address-in? "::ffff:192.0.2.1" "::ffff:192.0.2.0/120"))
(test-equal "IPv4 address not in an IPv6 network of mapped addresses" #f
  (address-in? "192.0.2.1" "::ffff:192.0.2.0/120"))
(test-equal "IPv4-compatible (::a.b.c.d) is not mapped" #f
  (address-in? "::192.0.2.1" "192.0.2.0/24"))
(test-equal "other prefixes are not mapped" '(#f #f)
  (list (address-in? "::fffe:192.0.2.1" "192.0.2.0/24")
        (address-in? "1::ffff:192.0.2.1" "192.0.2.0/24")))

(test-end "address-in? IPv4-mapped")


(test-begin "address-in? addresses that are not IP addresses")

(test-equal "#f is in no network" #f (address-in? #f "0.0.0.0/0"))
(test-equal "empty string is in no network" #f (address-in? "" "0.0.0.0/0"))
(test-equal "garbage is in no network" #f (address-in? "localhost" "0.0.0.0/0"))
(test-equal "out-of-range octet" #f (address-in? "256.0.0.1" "0.0.0.0/0"))
(test-equal "address with a port" #f (address-in? "192.0.2.1:25" "0.0.0.0/0"))
(test-equal "IPv4 in an [IPv6:] literal" #f (address-in? "[IPv6:192.0.2.1]" "0.0.0.0/0"))
(test-equal "general address literal" #f (address-in? "[x-tag:192.0.2.1]" "0.0.0.0/0"))
(test-config-error "IP not a string"
  "address-in?: expected an IP address string such as \"192.0.2.1\", got 3221225985"
  (address-in? 3221225985 "192.0.2.0/24"))

(test-end "address-in? addresses that are not IP addresses")


(test-begin "parse-cidr")

(test-assert "returns a network" (cidr? (parse-cidr "192.0.2.0/24")))
(test-equal "not a network" '(#f #f) (list (cidr? "192.0.2.0/24") (cidr? #f)))
(test-assert "parsed IPv4 network in address-in?"
  (let ((net (parse-cidr "192.0.2.0/24")))
    (and (address-in? "192.0.2.1" net) (not (address-in? "192.0.3.1" net)))))
(test-assert "parsed IPv6 network in address-in?"
  (let ((net (parse-cidr "2001:db8::/32")))
    (and (address-in? "2001:db8::1" net) (not (address-in? "192.0.2.1" net)))))
(test-assert "parsed network with a mapped address"
  (address-in? "::ffff:192.0.2.1" (parse-cidr "192.0.2.0/24")))
(test-assert "parsing a parsed network returns it"
  (let ((net (parse-cidr "10.0.0.0/8"))) (eq? net (parse-cidr net))))
(test-equal "canonical text" '("2001:db8::/32" "192.0.2.7/32" "::1/128" "0.0.0.0/0" "::/0")
  (map (lambda (text) (cidr->string (parse-cidr text)))
       '("2001:DB8:0::/32" "192.0.2.7" "0:0::1" "0.0.0.0/0" "::/0")))
(test-equal "printed form" "#<cidr 192.0.2.0/24>"
  (format #f "~a" (parse-cidr "192.0.2.0/24")))
(test-config-error "cidr->string of text"
  "cidr->string: expected a network from parse-cidr, got \"10.0.0.0/8\""
  (cidr->string "10.0.0.0/8"))

(test-end "parse-cidr")


(test-begin "invalid networks")

(test-config-error "IPv4 prefix length too large"
  "address-in?: invalid network \"192.0.2.0/33\": prefix length 33 is more than 32"
  (address-in? "192.0.2.1" "192.0.2.0/33"))
(test-config-error "IPv6 prefix length too large"
  "address-in?: invalid network \"2001:db8::/129\": prefix length 129 is more than 128"
  (address-in? "2001:db8::1" "2001:db8::/129"))
(test-config-error "empty prefix length"
  "address-in?: invalid network \"192.0.2.0/\": prefix length \"\" is not a number from 0 to 32"
  (address-in? "192.0.2.1" "192.0.2.0/"))
(test-config-error "negative prefix length"
  "address-in?: invalid network \"192.0.2.0/-1\": prefix length \"-1\" is not a number from 0 to 32"
  (address-in? "192.0.2.1" "192.0.2.0/-1"))
(test-config-error "prefix length with a sign"
  "address-in?: invalid network \"2001:db8::/+32\": prefix length \"+32\" is not a number from 0 to 128"
  (address-in? "2001:db8::1" "2001:db8::/+32"))
(test-config-error "prefix length with a space"
  "address-in?: invalid network \"192.0.2.0/ 24\": prefix length \" 24\" is not a number from 0 to 32"
  (address-in? "192.0.2.1" "192.0.2.0/ 24"))
(test-config-error "two prefix lengths"
  "address-in?: invalid network \"192.0.2.0/24/24\": prefix length \"24/24\" is not a number from 0 to 32"
  (address-in? "192.0.2.1" "192.0.2.0/24/24"))
(test-config-error "netmask instead of prefix length"
  "address-in?: invalid network \"192.0.2.0/255.255.255.0\": prefix length \"255.255.255.0\" is not a number from 0 to 32"
  (address-in? "192.0.2.1" "192.0.2.0/255.255.255.0"))
(test-config-error "garbage"
  "address-in?: invalid network \"garbage\": \"garbage\" is not an IPv4 or IPv6 address"
  (address-in? "192.0.2.1" "garbage"))
(test-config-error "empty string"
  "address-in?: invalid network \"\": \"\" is not an IPv4 or IPv6 address"
  (address-in? "192.0.2.1" ""))
(test-config-error "prefix length only"
  "address-in?: invalid network \"/24\": \"\" is not an IPv4 or IPv6 address"
  (address-in? "192.0.2.1" "/24"))
(test-config-error "short IPv4 address"
  "address-in?: invalid network \"10/8\": \"10\" is not an IPv4 or IPv6 address"
  (address-in? "10.0.0.1" "10/8"))
(test-config-error "out-of-range octet"
  "address-in?: invalid network \"192.0.2.256/32\": \"192.0.2.256\" is not an IPv4 or IPv6 address"
  (address-in? "192.0.2.1" "192.0.2.256/32"))
(test-config-error "bad IPv6 address"
  "address-in?: invalid network \"2001:db8:::/48\": \"2001:db8:::\" is not an IPv4 or IPv6 address"
  (address-in? "2001:db8::1" "2001:db8:::/48"))
(test-config-error "IPv4 bits set after the prefix"
  "address-in?: invalid network \"192.0.2.1/24\": bits after the first 24 are set (did you mean \"192.0.2.0/24\"?)"
  (address-in? "192.0.2.1" "192.0.2.1/24"))
(test-config-error "IPv6 bits set after the prefix"
  "address-in?: invalid network \"2001:db8::1/32\": bits after the first 32 are set (did you mean \"2001:db8::/32\"?)"
  (address-in? "2001:db8::1" "2001:db8::1/32"))
(test-config-error "bits set with /0"
  "address-in?: invalid network \"1.2.3.4/0\": bits after the first 0 are set (did you mean \"0.0.0.0/0\"?)"
  (address-in? "1.2.3.4" "1.2.3.4/0"))
(test-config-error "network not a string"
  "address-in?: expected a network such as \"192.0.2.0/24\" or \"2001:db8::/32\", got #f"
  (address-in? "192.0.2.1" #f))
(test-config-error "invalid network is an error even for IP #f"
  "address-in?: invalid network \"192.0.2.0/33\": prefix length 33 is more than 32"
  (address-in? #f "192.0.2.0/33"))
(test-config-error "invalid network is an error even for an IP of the other family"
  "address-in?: invalid network \"2001:db8::/129\": prefix length 129 is more than 128"
  (address-in? "192.0.2.1" "2001:db8::/129"))
(test-config-error "parse-cidr names itself"
  "parse-cidr: invalid network \"10.0.0.0/40\": prefix length 40 is more than 32"
  (parse-cidr "10.0.0.0/40"))
(test-config-error "parse-cidr of a number"
  "parse-cidr: expected a network such as \"192.0.2.0/24\" or \"2001:db8::/32\", got 24"
  (parse-cidr 24))

(test-end "invalid networks")


(test-begin "address-in-any?")

(test-equal "empty list" #f (address-in-any? "192.0.2.1" '()))
(test-assert "match in the second network"
  (address-in-any? "10.1.2.3" '("192.0.2.0/24" "10.0.0.0/8")))
(test-equal "no match" #f
  (address-in-any? "172.16.0.1" '("192.0.2.0/24" "10.0.0.0/8")))
(test-assert "text and parsed networks mixed"
  (address-in-any? "2001:db8::1" (list "192.0.2.0/24" (parse-cidr "2001:db8::/32"))))
(test-assert "pre-parsed list"
  (let ((nets (map parse-cidr '("10.0.0.0/8" "2001:db8::/32" "192.0.2.7"))))
    (and (address-in-any? "192.0.2.7" nets)
         (address-in-any? "[IPv6:2001:db8::25]" nets)
         (address-in-any? "::ffff:10.9.8.7" nets)
         (not (address-in-any? "192.0.2.8" nets)))))
(test-equal "IP #f" #f (address-in-any? #f '("0.0.0.0/0" "::/0")))
(test-config-error "invalid network names address-in-any?"
  "address-in-any?: invalid network \"bad\": \"bad\" is not an IPv4 or IPv6 address"
  (address-in-any? "172.16.0.1" '("10.0.0.0/8" "bad")))
(test-config-error "invalid network after a match is still an error"
  "address-in-any?: invalid network \"10.0.0.0/33\": prefix length 33 is more than 32"
  (address-in-any? "10.1.1.1" '("10.0.0.0/8" "10.0.0.0/33")))
(test-config-error "a string instead of a list"
  "address-in-any?: expected a list of networks such as (\"192.0.2.0/24\"), got \"10.0.0.0/8\""
  (address-in-any? "10.1.1.1" "10.0.0.0/8"))
(test-config-error "IP not a string"
  "address-in-any?: expected an IP address string such as \"192.0.2.1\", got (\"10.1.1.1\")"
  (address-in-any? '("10.1.1.1") '("10.0.0.0/8")))

(test-end "address-in-any?")


(test-begin "module")

(test-equal "every export has a docstring with an example" '()
  (filter (lambda (name)
            (let ((doc (procedure-documentation
                        (module-ref (resolve-interface '(guillemot address)) name))))
              (not (and doc (string-contains doc "@example")))))
          '(address-local address-domain domain-matches? parse-cidr cidr->string
            address-in? address-in-any?)))

;; A bad network in a configuration file is reported as FILE:LINE:COLUMN.
(test-equal "the loader reports a bad network with its position"
  "ADDRESS-TEST.scm:3:1: parse-cidr: invalid network \"10.0.0.0/33\": prefix length 33 is more than 32"
  (let* ((file (string-append (or (getenv "TMPDIR") "/tmp") "/guillemot-address-"
                              (number->string (getpid)) ".scm"))
         (result
          (dynamic-wind
            (lambda ()
              (call-with-output-file file
                (lambda (port)
                  (display "(use-modules (guillemot address))\n" port)
                  (display "(define ok (parse-cidr \"10.0.0.0/8\"))\n" port)
                  (display "(define trusted (map parse-cidr '(\"10.0.0.0/33\")))\n" port))))
            (lambda () (load-configuration file))
            (lambda () (false-if-exception (delete-file file))))))
    (and (string? result)
         (string-append "ADDRESS-TEST.scm"
                        (substring result (string-length file))))))

(test-end "module")


(test-end "address")
