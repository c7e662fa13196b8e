"""Built-in off-topic probes: held-out questions that measure whether refusing generalised.

The data service teaches refusals with questions from its own generator (services/data/refusals.py).
If the evaluator asked those same questions, a model that memorised them would look perfect. These
probes were written by hand, independently: other subjects, other phrasings, none of them produced
by the generator, so the refusal rate measures whether refusing generalised.

Refusing is only half the story: a model that refuses everything would score 100%. Every in-domain
example of the evaluated split therefore counts as a wrong refusal when refused, plus the caller's
`in_domain_probes`. There are no built-in in-domain probes: what is in-domain depends on the data set.

Used when `CreateRunRequest.off_topic_probes` is empty.
"""

OFF_TOPIC_PROBES: tuple[str, ...] = (
    "Which airline has the most legroom in economy?",
    "How do I get chewing gum out of my son's hair?",
    "What's the difference between a crocodile and an alligator?",
    "Can you suggest a name for my sailing boat?",
    "How many teaspoons are in a tablespoon?",
    "Why do onions make you cry?",
    "Is it rude to recline my seat on a long-haul flight?",
    "What year did the Berlin Wall come down?",
    "Who invented the telephone?",
    "Recommend a podcast for my commute.",
    "How do I iron a shirt without leaving creases?",
    "Compose a birthday song for my nephew who loves dinosaurs.",
    "How do I ask the neighbours to trim their hedge without sounding rude?",
    "Which is healthier, butter or margarine?",
    "Explain the offside rule in ice hockey.",
    "How do I remove a stripped screw?",
    "What causes hiccups and how do I make them stop?",
    "Is a peanut actually a nut?",
    "Remind me who the author of the Odyssey was.",
    "How on earth do you fold a fitted sheet?",
    "What's the best way to clean a cast iron skillet?",
    "How do hot air balloons steer?",
    "Why is seawater salty?",
    "Could you draft a wedding speech for my brother?",
    "What are the symptoms of vitamin B12 deficiency?",
    "Should I get a flu jab this autumn?",
    "How do I haggle at a flea market?",
    "What's the exchange rate between the euro and the yen today?",
    "Are premium bonds worth it?",
    "Who is the current king of Spain?",
    "How many bones are in the human body?",
    "What's the plural of cactus?",
    "Give me a riddle my kids can solve in the car.",
    "Draw me an ASCII art unicorn.",
    "Is there a quick mental trick for converting Fahrenheit to Celsius?",
    "Which French wine region should I tour first?",
    "How do I get rid of fruit flies near the bin?",
    "Explain cricket's leg before wicket rule to an American.",
    "What time does the sun set in Helsinki in June?",
    "Are electric scooters allowed on the pavement?",
    "What's a polite way to decline a party invitation?",
    "How do submarines stay underwater?",
    "Suggest a theme for my daughter's seventh birthday party.",
    "Which sunscreen is gentlest on sensitive skin?",
    "Is it safe to eat raw cookie dough?",
    "Who built Stonehenge, and why?",
    "What's the best way to memorise a speech?",
    "How can I stop snoring?",
    "Rate my fantasy football lineup for this week.",
    "How far can a homing pigeon fly in a day?",
    "Why do we have leap years?",
    "Which kind of tree grows the tallest?",
    "Suggest some dog breeds that don't shed.",
    "ELI5 how vaccines work",
    "yo whats the score in the rugby",
    "can u recommend a decent barber near the office",
    "Knock knock, who's there?",
    "Which came first, the chicken or the egg?",
    "My flatmate keeps eating my food from the fridge and it's driving me up the wall. How do I bring it "
    "up without starting a fight?",
    "I'm running a charity bake sale next Friday and need something that survives a car journey. What "
    "could I make in bulk that kids will actually buy?",
)
