"""Deployment tools: ``basicsr-mh export`` (one head as a plain backbone), ``infer`` (deblur images, pick a head
without ground truth) and ``analyze`` (the paper's Fig. 3/4/6 and a selection-rule table). Each module has a
``main(argv, prog)`` that returns an exit code."""
