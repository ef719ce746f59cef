from resnext_lit.cli import run

run()
