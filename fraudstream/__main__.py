from fraudstream.cli import main

if __name__ == "__main__":  # not when a refit worker process imports it
    main()
