;;; (guillemot config) — evaluating a configuration file.
;;;
;;; Each top-level form is read and evaluated in turn in a fresh module that
;;; uses (guillemot).  The first error stops the load and is returned as one
;;; line "FILE:LINE:COLUMN: message": the position is the failing top-level
;;; form's, or for a syntax error the reader's.

(define-module (guillemot config)
  #:use-module (guillemot)
  #:use-module (ice-9 match)
  #:export (load-configuration))

(define (make-config-module)
  (let ((module (make-fresh-user-module)))
    (module-use! module (resolve-interface '(guillemot)))
    module))

(define (error-text key args)
  (match (cons key args)
    (('config-error message) message)
    (('read-error _ message margs . _)
     ;; The reader's message already starts with FILE:LINE:COLUMN.
     (apply format #f message margs))
    (_ (string-trim-right
        (call-with-output-string
          (lambda (port) (print-exception port #f key args)))))))

(define (position-of form port file)
  (let ((props (and (pair? form) (source-properties form))))
    (if (and props (assq 'line props))
        (format #f "~a:~a:~a" file (1+ (assq-ref props 'line)) (1+ (assq-ref props 'column)))
        (format #f "~a:~a:~a" file (1+ (port-line port)) (1+ (port-column port))))))

(define (load-configuration file)
  "Evaluate FILE.  Return #f on success, or the error message."
  ((@@ (guillemot) %reset-rules!))
  (catch #t
    (lambda ()
      (call-with-input-file file
        (lambda (port)
          (set-port-filename! port file)
          (let ((module (make-config-module)))
            (let loop ()
              (let ((form (catch #t
                            (lambda () (read port))
                            (lambda (key . args)
                              (throw 'located
                                     (if (eq? key 'read-error)
                                         (error-text key args)
                                         (format #f "~a:~a:~a: ~a" file (1+ (port-line port))
                                                 (1+ (port-column port)) (error-text key args))))))))
                (unless (eof-object? form)
                  (catch #t
                    (lambda () (eval form module))
                    (lambda (key . args)
                      (throw 'located
                             (format #f "~a: ~a" (position-of form port file)
                                     (error-text key args)))))
                  (loop))))))
        #:encoding "UTF-8")
      #f)
    (lambda (key . args)
      (match (cons key args)
        (('located message) message)
        (('system-error . _) (format #f "~a: ~a" file (error-text key args)))
        (_ (format #f "~a: ~a" file (error-text key args)))))))
