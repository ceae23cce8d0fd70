;;; (guillemot rules greylist) — greylisting.
;;;
;;; A real mail server that gets a 4xx reply tries again later; most spam
;;; software does not.  Greylisting defers the first attempt of every
;;; (client network, sender, recipient) triplet it has not seen, and lets
;;; the same triplet through when it comes back after a delay (but not too
;;; late); a triplet that passed is remembered for weeks, so that regular
;;; correspondents are delayed once.
;;;
;;;   (use-modules (guillemot rules greylist))
;;;   (greylist #:delay 300 #:exempt-networks '("127.0.0.0/8" "::1"))
;;;
;;; Triplets live in a store: a record of two procedures, get and put!, so
;;; that they can be kept elsewhere than in memory (a database, shared by
;;; several servers).  The default store is a hash table in this process,
;;; pruned as entries expire; it is emptied when the server stops.

(define-module (guillemot rules greylist)
  #:use-module (srfi srfi-9)
  #:use-module (ice-9 match)
  #:use-module ((guillemot) #:select (rule next defer log-message client-address sender))
  #:use-module (guillemot rules common)
  #:export (greylist
            make-greylist-store
            greylist-store?
            greylist-store-get
            greylist-store-put!
            make-memory-greylist-store))


;;; Stores.

(define-record-type <greylist-store>
  (make-greylist-store get put!)
  greylist-store?
  (get greylist-store-get)              ; KEY -> ENTRY or #f
  (put! greylist-store-put!))           ; KEY ENTRY EXPIRES -> unspecified

(define* (make-memory-greylist-store #:key (clock default-clock) (prune-interval 600)
                                     (max-entries 100000))
  "Return a greylist store kept in a hash table of this process.  An entry
is forgotten once its expiry time, by @var{clock}, has passed; expired
entries are removed at most every @var{prune-interval} seconds, when an
entry is stored.  When the table holds @var{max-entries} entries after
pruning, new triplets are not remembered (their attempts are deferred until
old entries expire)."
  (check-argument 'make-memory-greylist-store #:clock clock (procedure-taking? 0)
                  "a procedure of no argument returning seconds")
  (check-argument 'make-memory-greylist-store #:prune-interval prune-interval positive-real?
                  "a number of seconds, more than 0")
  (check-argument 'make-memory-greylist-store #:max-entries max-entries positive-integer?
                  "a number of entries, 1 or more")
  (let ((table (make-hash-table))       ; KEY -> (EXPIRES . ENTRY)
        (count 0)
        (last-prune (clock)))
    (define (prune! now)
      (set! last-prune now)
      (let ((expired (hash-fold (lambda (key value acc) (if (< (car value) now) (cons key acc) acc))
                                '() table)))
        (for-each (lambda (key) (hash-remove! table key)) expired)
        (set! count (- count (length expired)))))
    (make-greylist-store
     (lambda (key)
       (match (hash-ref table key)
         ((expires . entry) (and (>= expires (clock)) entry))
         (#f #f)))
     (lambda (key entry expires)
       (let ((now (clock)))
         (when (or (>= (- now last-prune) prune-interval) (>= count max-entries))
           (prune! now))
         (cond ((hash-ref table key)
                (hash-set! table key (cons expires entry)))
               ((< count max-entries)
                (hash-set! table key (cons expires entry))
                (set! count (1+ count)))))))))


;;; Triplets.

;; An entry is a list that write and read keep as it is, so that a store
;; can keep it as text: (pending FIRST-SEEN) for a triplet deferred at
;; FIRST-SEEN and not yet retried late enough, (passed LAST-SEEN) for one
;; that passed, LAST-SEEN being its latest attempt.

(define (greylist-key network sender rcpt)
  "The store key of a triplet: a string."
  (format #f "~a ~s ~s" network (string-downcase sender) (string-downcase rcpt)))

(define (greylist-step entry now delay expire remember)
  "Decide about a triplet whose stored entry is ENTRY (#f when none) at
time NOW.  Return three values: the outcome, @code{new} or @code{early}
(defer), @code{passed} (first time through) or @code{known} (pass); the
entry to store, or #f for no change; and when the store may forget it."
  (define (new)
    (values 'new (list 'pending now) (+ now expire)))
  (match entry
    (('passed (? real? last))
     (if (<= (- now last) remember)
         (values 'known (list 'passed now) (+ now remember))
         (new)))
    (('pending (? real? first))
     (let ((age (- now first)))
       (cond ((< age 0) (new))             ; the clock went back
             ((< age delay) (values 'early #f (+ first expire)))
             ((<= age expire) (values 'passed (list 'passed now) (+ now remember)))
             (else (new)))))
    (_ (new))))


;;; The rule.

(define-rules (greylist
               (delay 300)
               (expire (* 4 3600))
               (remember (* 36 24 3600))
               (exempt-networks '())
               (ipv4-prefix 24)
               (ipv6-prefix 64)
               (clock default-clock)
               (store #f))
  "Add the rcpt rule @code{\"greylist\"}.  The first attempt of a triplet
(the client's network, the sender, the recipient) is deferred with
@samp{451 4.7.1 Greylisted, try again later}, and so is every attempt
within @var{delay} seconds of it; an attempt after @var{delay} and within
@var{expire} seconds passes, and the triplet then passes for
@var{remember} seconds after its latest attempt.  The client's network is
its address's first @var{ipv4-prefix} or @var{ipv6-prefix} bits.  Clients
in @var{exempt-networks} are not greylisted.  @var{store} keeps triplets:
@code{#f} for a new @code{make-memory-greylist-store}; @var{clock}, a
procedure of no argument returning seconds, tells the time."
  (check-argument 'greylist #:delay delay non-negative-real? "a number of seconds, 0 or more")
  (check-argument 'greylist #:expire expire (lambda (x) (and (real? x) (> x delay)))
                  (format #f "a number of seconds, more than #:delay (~a)" delay))
  (check-argument 'greylist #:remember remember positive-real? "a number of seconds, more than 0")
  (check-argument 'greylist #:ipv4-prefix ipv4-prefix (lambda (x) (and (exact-integer? x) (<= 0 x 32)))
                  "a prefix length from 0 to 32")
  (check-argument 'greylist #:ipv6-prefix ipv6-prefix (lambda (x) (and (exact-integer? x) (<= 0 x 128)))
                  "a prefix length from 0 to 128")
  (check-argument 'greylist #:clock clock (procedure-taking? 0)
                  "a procedure of no argument returning seconds")
  (check-argument 'greylist #:store store (lambda (x) (or (not x) (greylist-store? x)))
                  "#f or a store from make-greylist-store or make-memory-greylist-store")
  (let ((exempt (parse-networks 'greylist #:exempt-networks exempt-networks))
        (store (or store (make-memory-greylist-store #:clock clock))))
    (rule rcpt "greylist"
      (lambda (s rcpt)
        (let ((ip (client-address s)))
          (if (client-in? ip exempt)
              (next)
              (let* ((key (greylist-key (client-network ip ipv4-prefix ipv6-prefix)
                                        (or (sender s) "") rcpt))
                     (now (clock)))
                (call-with-values
                    (lambda () (greylist-step ((greylist-store-get store) key)
                                              now delay expire remember))
                  (lambda (outcome entry expires)
                    (when entry
                      ((greylist-store-put! store) key entry expires))
                    (case outcome
                      ((new early)
                       (when (eq? outcome 'new)
                         (log-message s "greylist: new client=[~a], from=<~a>, to=<~a>"
                                      ip (or (sender s) "") rcpt))
                       (defer 451 "4.7.1 Greylisted, try again later"))
                      ((passed)
                       (log-message s "greylist: passed client=[~a], from=<~a>, to=<~a>"
                                    ip (or (sender s) "") rcpt)
                       (next))
                      (else (next))))))))))))
