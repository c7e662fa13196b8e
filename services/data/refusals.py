"""Off-topic questions and the fixed answer that teaches a tuned model to stay in its domain.

The data service mixes these rows into a prepared dataset when the caller asks for refusals
(`RefusalOptions.fraction`). A handful of hand-written refusal rows is not enough: measured on
the seed course's data, 36 refusal rows in 1,137 taught the model nothing. The model has to see
many different subjects, phrasings, lengths and styles, or it learns to refuse one phrasing rather
than a whole class of questions. So questions are composed from topic-specific subjects and
question templates, then dressed with openers, context sentences, closers, lowercase and typos.

The evaluator measures refusals on its own held-out probes (services/eval/off_topic_probes.py),
written independently of the lists here, so a good score cannot come from memorising them.
"""

import random
import re
from dataclasses import dataclass
from typing import NamedTuple

DEFAULT_REFUSAL_TEMPLATE = "Let's keep the discussion relevant to {domain}."

# Questions outside this range read unnaturally or are too long for a chat turn.
MIN_WORDS = 3
MAX_WORDS = 40

# Candidates composed per requested question before concluding the lists cannot give that many.
_ATTEMPTS_PER_QUESTION = 50


def refusal_answer(domain: str, text: str | None = None) -> str:
    """The assistant's answer to an off-topic question.

    `text` is a caller's fixed refusal (used verbatim, so it can match an existing data set's
    wording); without it the answer names `domain`, so the model learns what it should talk about.
    """
    if text:
        return text
    domain = domain.strip()
    if not domain:
        raise ValueError("refusal domain must not be empty when no refusal text is given")
    return DEFAULT_REFUSAL_TEMPLATE.format(domain=domain)


@dataclass(frozen=True)
class _Topic:
    """One off-topic area: what people ask about and how they ask it.

    Templates hold `{s}`, filled with one of the subjects; contexts are sentences that can come
    before the question to make long, conversational variants.
    """

    name: str
    subjects: tuple[str, ...]
    templates: tuple[str, ...]
    contexts: tuple[str, ...]


# Data tables, laid out by hand to stay readable: one item per line would triple their length.
# fmt: off
_TOPICS: tuple[_Topic, ...] = (
    _Topic(
        "cooking",
        (
            "lasagna", "pad thai", "sourdough bread", "banana bread", "chicken tikka masala",
            "beef stew", "guacamole", "mushroom risotto", "fluffy pancakes", "tonkotsu ramen",
            "seafood paella", "apple pie", "chocolate chip cookies", "french onion soup",
            "shakshuka", "mac and cheese", "spaghetti carbonara", "falafel",
        ),
        (
            "How do I make {s} from scratch?", "What's the secret to a really good {s}?",
            "Give me a recipe for {s}.", "{s} recipe pls", "How long should I cook {s}?",
            "What wine goes with {s}?", "Can I make {s} the day before and reheat it?",
            "Write me a shopping list for {s} for six people.",
            "What can I use instead of eggs in {s}?", "how many calories are in a plate of {s}",
            "Can I freeze leftover {s}?", "why does my {s} always turn out bland",
        ),
        (
            "I'm hosting a dinner party on Saturday.", "My partner's birthday is coming up.",
            "I only have a tiny kitchen and one pan.",
            "I've never cooked anything more complicated than toast. My in-laws visit next week.",
        ),
    ),
    _Topic(
        "drinks",
        (
            "espresso", "a negroni", "cold brew", "matcha", "a margarita", "an old fashioned",
            "kombucha", "a chai latte", "mulled wine", "a mojito", "hot chocolate", "sangria",
            "bubble tea", "an espresso martini",
        ),
        (
            "How do you make {s}?", "What's the trick to making {s} at home?",
            "Is {s} bad for you if you have it every day?", "what snacks go well with {s}",
            "Where does {s} originally come from?", "Tell me a fun fact about {s}.",
            "best way to make {s}?", "How do bartenders make {s} taste so good?",
        ),
        ("We're having people over tonight.", "I just bought a fancy new machine."),
    ),
    _Topic(
        "sports",
        (
            "the World Cup", "the Super Bowl", "Wimbledon", "the Tour de France", "the NBA finals",
            "the Champions League final", "the Olympics", "the Ryder Cup", "the Stanley Cup",
            "the Boston Marathon", "the Cricket World Cup", "the Monaco Grand Prix",
            "the Six Nations", "the Masters",
        ),
        (
            "Who won {s} last year?", "Who do you think will win {s} this year?",
            "When does {s} start?", "How many people watch {s}?",
            "Give me your prediction for {s}.", "who's the favourite for {s}",
            "Can you explain how qualifying for {s} works?",
            "What's the biggest upset in the history of {s}?", "Where can I watch {s} for free?",
        ),
        (
            "My friends and I have a bet going.", "I'm trying to win the office sweepstake.",
            "I never follow sports but my dad is obsessed and I want to impress him.",
        ),
    ),
    _Topic(
        "fitness",
        (
            "push-ups", "a half marathon", "deadlifts", "yoga", "a 5k run", "pull-ups", "planks",
            "swimming laps", "spin classes", "kettlebell swings", "squats", "rock climbing",
            "jumping rope", "pilates",
        ),
        (
            "How do I get better at {s}?", "Make me a four-week plan for {s}.",
            "Is it okay to do {s} every single day?", "How many calories does {s} burn?",
            "What muscles does {s} work?", "beginner tips for {s}?",
            "Can you design a workout around {s}?", "How do I avoid injuries with {s}?",
        ),
        (
            "I'm trying to get back in shape after the holidays.",
            "My doctor told me to move more.", "I'm 45 and haven't exercised in years.",
        ),
    ),
    _Topic(
        "history",
        (
            "the fall of the Roman Empire", "the French Revolution", "the Battle of Hastings",
            "the Ming dynasty", "the Cold War", "the invention of the printing press",
            "the Black Death", "the building of the pyramids", "the Treaty of Versailles",
            "the Silk Road", "the Aztec empire", "the Industrial Revolution", "the Viking age",
            "the Apollo moon landing", "the Hundred Years' War",
        ),
        (
            "What caused {s}?", "Can you summarize {s} in a paragraph?",
            "Who were the key figures in {s}?", "When exactly did {s} happen?",
            "Explain {s} like I'm ten.", "what was daily life like during {s}",
            "Why does {s} still matter today?", "Give me three surprising facts about {s}.",
            "Write a short essay on {s} for my history class.",
        ),
        (
            "I have a history exam on Friday.", "I'm watching a documentary right now.",
            "My grandfather keeps telling stories about this and I never know if they're true.",
        ),
    ),
    _Topic(
        "geography",
        (
            "Australia", "Canada", "Mongolia", "Peru", "Iceland", "Kenya", "Norway", "Vietnam",
            "Chile", "Morocco", "New Zealand", "Portugal", "Nepal", "Egypt", "Argentina",
        ),
        (
            "What is the capital of {s}?", "How many people live in {s}?",
            "What's the highest mountain in {s}?", "Which countries border {s}?",
            "What languages do they speak in {s}?", "What currency does {s} use?",
            "how big is {s} compared to texas", "Name the longest river in {s}.",
            "capital of {s}?", "What time zone is {s} in?",
        ),
        ("We're doing a pub quiz tonight.", "My kid asked me and I had no idea."),
    ),
    _Topic(
        "travel",
        (
            "Lisbon", "Tokyo", "Bali", "the Scottish Highlands", "Barcelona", "Patagonia",
            "Marrakech", "Prague", "Cape Town", "Kyoto", "the Amalfi Coast", "Vancouver",
            "Istanbul", "Hanoi", "Buenos Aires",
        ),
        (
            "What should I see in {s} in three days?", "Plan me a week-long itinerary for {s}.",
            "When is the best time of year to visit {s}?", "Is {s} safe for solo travellers?",
            "Which neighbourhood should I stay in when visiting {s}?", "cheap flights to {s}?",
            "What should I pack for a trip to {s}?", "Do I need a visa to visit {s}?",
            "What local food must I try in {s}?", "Is {s} expensive for tourists?",
        ),
        (
            "My partner and I are finally taking a holiday.",
            "I have two weeks off in the spring.",
            "We're travelling with two small kids. They get bored easily.",
        ),
    ),
    _Topic(
        "weather",
        (
            "tomorrow", "this weekend", "next Tuesday", "on Christmas Day", "over the next ten days",
            "on Saturday afternoon", "tonight", "on Friday morning", "during the school holidays",
            "next week in Madrid", "this evening in Chicago",
        ),
        (
            "What's the weather going to be like {s}?", "Will it rain {s}?",
            "Do I need an umbrella {s}?", "How cold will it get {s}?", "weather forecast {s}?",
            "Is it going to snow {s}?", "Should I cancel the barbecue if it rains {s}?",
            "Will it be sunny enough for the beach {s}?",
        ),
        (
            "I'm planning a picnic.", "We have an outdoor wedding coming up.",
            "My flight leaves early and I'm worried about storms.",
        ),
    ),
    _Topic(
        "earth_science",
        (
            "rainbows", "earthquakes", "volcanoes", "hurricanes", "glaciers", "tsunamis",
            "thunderstorms", "tornadoes", "auroras", "sand dunes", "geysers", "coral reefs",
            "hailstones", "ocean tides",
        ),
        (
            "What causes {s}?", "How do {s} form?", "Explain how {s} work.",
            "Are {s} dangerous?", "why do we get {s}",
            "Give me a simple explanation of {s} for a school project.",
            "Where in the world are {s} most common?",
        ),
        ("My daughter asked me this at breakfast.", "I saw a documentary last night."),
    ),
    _Topic(
        "astronomy",
        (
            "black holes", "Mars", "the Andromeda galaxy", "Saturn's rings", "neutron stars",
            "the Big Bang", "solar eclipses", "Jupiter's moons", "dark matter",
            "the James Webb telescope", "shooting stars", "Pluto", "the Milky Way", "comets",
        ),
        (
            "How far away is {s}?", "What do we actually know about {s}?",
            "Explain {s} in simple terms.", "Could humans ever travel to {s}?",
            "Tell me something mind-blowing about {s}.",
            "Can I see {s} without a telescope?", "what's the deal with {s}",
        ),
        ("I was stargazing last night.", "My nephew is obsessed with space."),
    ),
    _Topic(
        "celebrities",
        (
            "Taylor Swift", "Beyoncé", "Tom Hanks", "Keanu Reeves", "Rihanna", "Lionel Messi",
            "Oprah Winfrey", "Zendaya", "Brad Pitt", "Lady Gaga", "Ryan Reynolds",
            "Serena Williams", "Shakira", "Dwayne Johnson", "Meryl Streep",
        ),
        (
            "How old is {s}?", "Who is {s} dating right now?", "What is {s}'s net worth?",
            "Where does {s} live?", "Is {s} married?", "What's the latest gossip about {s}?",
            "How did {s} get famous?", "Tell me something nobody knows about {s}.",
            "how tall is {s}", "Is {s} nice in real life?",
        ),
        ("My sister and I were arguing about this.", "I just saw the news on my phone."),
    ),
    _Topic(
        "movies",
        (
            "Inception", "The Godfather", "Titanic", "Jurassic Park", "Pulp Fiction",
            "The Lord of the Rings", "Casablanca", "Spirited Away", "Parasite",
            "Back to the Future", "Interstellar", "Toy Story", "Jaws", "Amélie", "Gladiator",
        ),
        (
            "Is {s} worth watching?", "Explain the ending of {s}.", "Who directed {s}?",
            "What movies are similar to {s}?", "Where can I stream {s}?",
            "Give me a spoiler-free summary of {s}.", "Is {s} okay for a ten-year-old?",
            "Any fun behind-the-scenes facts about {s}?", "movies like {s}?",
        ),
        ("It's movie night at my place.", "I fell asleep halfway through it yesterday."),
    ),
    _Topic(
        "tv_shows",
        (
            "Breaking Bad", "The Office", "Friends", "Game of Thrones", "Stranger Things",
            "The Crown", "Succession", "Seinfeld", "The Sopranos", "Ted Lasso", "Fleabag",
            "The Wire", "Downton Abbey",
        ),
        (
            "Should I start watching {s}?", "How many seasons of {s} are there?",
            "Who is the best character in {s}?", "Recap the last season of {s} for me.",
            "Is {s} coming back for another season?", "shows like {s}?",
            "What's the best episode of {s}?", "Was the finale of {s} any good?",
        ),
        ("I need something to binge this weekend.", "Everyone at lunch keeps talking about it."),
    ),
    _Topic(
        "music",
        (
            "The Beatles", "Mozart", "Bob Dylan", "Fleetwood Mac", "Radiohead", "Nirvana",
            "Daft Punk", "Miles Davis", "ABBA", "Queen", "Adele", "Bach", "Pink Floyd",
            "Kendrick Lamar", "Björk",
        ),
        (
            "What's the best album by {s}?", "Where should I start with {s}?",
            "Recommend artists similar to {s}.", "What is the most famous song by {s}?",
            "Is {s} touring this year?", "Why is {s} considered so influential?",
            "make me a playlist inspired by {s}", "Who's better, {s} or Elvis?",
        ),
        ("I'm trying to broaden my music taste.", "I have a long drive tomorrow."),
    ),
    _Topic(
        "instruments",
        (
            "the guitar", "the piano", "the violin", "the drums", "the ukulele", "the saxophone",
            "the cello", "the harmonica", "the flute", "the trumpet", "the bass guitar",
        ),
        (
            "How long does it take to learn {s}?", "Am I too old to start learning {s}?",
            "What's an easy first song on {s}?", "How do I tune {s}?",
            "Which is easier to learn, {s} or singing?",
            "recommend a cheap beginner brand for {s}",
            "How many hours a day should I practise {s}?",
        ),
        ("I've always wanted to play music.", "My son wants lessons for his birthday."),
    ),
    _Topic(
        "books",
        (
            "Pride and Prejudice", "1984", "War and Peace", "The Great Gatsby", "Dune",
            "To Kill a Mockingbird", "Moby-Dick", "The Hobbit", "One Hundred Years of Solitude",
            "Crime and Punishment", "Jane Eyre", "The Catcher in the Rye", "Beloved", "Ulysses",
        ),
        (
            "What is {s} about?", "Summarize {s} in five sentences.",
            "What are the main themes of {s}?", "Is {s} worth reading?",
            "What should I read after {s}?", "Write a book report on {s} for me.",
            "Who wrote {s}?", "Is the film version of {s} better than the book?",
        ),
        ("Our book club meets on Thursday.", "I have an essay due and haven't finished it."),
    ),
    _Topic(
        "health",
        (
            "a headache that won't go away", "a sore throat", "lower back pain",
            "a sprained ankle", "insomnia", "heartburn", "a rash on my arm",
            "high blood pressure", "a stomach ache", "hay fever", "a fever", "migraines",
            "a twitching eyelid", "a cough that won't stop",
        ),
        (
            "What should I take for {s}?", "Is {s} something I should worry about?",
            "How do I get rid of {s} quickly?", "Can you diagnose {s}?",
            "What home remedies work for {s}?", "Should I see a doctor about {s}?",
            "how long does {s} usually last",
            "I've had {s} for three days, what could it be?",
        ),
        (
            "I can't get a doctor's appointment until next month.",
            "This is embarrassing to ask.",
        ),
    ),
    _Topic(
        "nutrition",
        (
            "the keto diet", "intermittent fasting", "a vegan diet", "protein shakes",
            "the Mediterranean diet", "cutting out sugar", "juice cleanses", "eating after 8pm",
            "a paleo diet", "vitamin D supplements", "collagen powder", "apple cider vinegar",
        ),
        (
            "Does {s} actually work?", "Is {s} safe long term?",
            "What are the pros and cons of {s}?", "Can {s} help me lose weight?",
            "is {s} healthy", "Make me a meal plan based on {s}.",
            "What does the research say about {s}?",
        ),
        ("I want to lose ten pounds before summer.", "My whole family is trying it."),
    ),
    _Topic(
        "stocks",
        (
            "Tesla", "Apple", "Nvidia", "Amazon", "gold", "the S&P 500", "Microsoft", "Coca-Cola",
            "index funds", "Netflix", "oil futures", "Berkshire Hathaway", "bank stocks",
            "dividend stocks",
        ),
        (
            "Should I invest in {s} right now?", "Is {s} going up or down next week?",
            "Where do you think {s} will be in a year?", "Give me a hot tip about {s}.",
            "What's your price target for {s}?", "Is {s} overvalued?",
            "should i put my savings into {s}", "How much of my portfolio should be in {s}?",
        ),
        ("I just got my bonus.", "The market dropped again this morning and I'm nervous."),
    ),
    _Topic(
        "crypto",
        (
            "Bitcoin", "Ethereum", "Dogecoin", "Solana", "NFTs", "a new meme coin", "stablecoins",
            "crypto staking", "Cardano", "Litecoin", "a crypto ETF",
        ),
        (
            "Is {s} a good investment?", "Will {s} hit a new all-time high this year?",
            "How do I buy {s}?", "Explain {s} to my grandmother.", "Is {s} a scam?",
            "{s} price prediction?", "What wallet should I use for {s}?",
        ),
        ("A friend made a lot of money on this.", "Everyone on social media is talking about it."),
    ),
    _Topic(
        "personal_finance",
        (
            "a mortgage", "my tax return", "a pension", "credit card debt", "an emergency fund",
            "a car loan", "my student loans", "a monthly budget", "my credit score",
            "saving for a house deposit", "my first paycheck",
        ),
        (
            "What should I know about {s}?", "Can you give me advice on {s}?",
            "What's the smartest way to handle {s}?", "Help me with {s}, I'm completely lost.",
            "Any tips for managing {s}?", "how do i get started with {s}",
            "Is it a mistake to ignore {s} until next year?",
        ),
        ("I'm 23 and nobody taught me this stuff.", "Money has been tight lately."),
    ),
    _Topic(
        "relationships",
        (
            "a first date", "a long-distance relationship", "meeting my partner's parents",
            "a breakup", "our anniversary", "online dating", "a marriage proposal",
            "a fight with my best friend", "moving in together", "a crush at the gym",
        ),
        (
            "Any advice for {s}?", "How should I handle {s}?",
            "I'm nervous about {s}, what should I do?", "Give me some tips for {s}.",
            "How do I know if I'm ready for {s}?",
            "What are common mistakes people make with {s}?", "help with {s} pls",
        ),
        (
            "This is a bit personal.", "I don't have anyone else to ask.",
            "My friends all give me different advice and I'm more confused than before.",
        ),
    ),
    _Topic(
        "parenting",
        (
            "a toddler who won't sleep", "a teenager glued to their phone", "picky eating",
            "moving a toddler out of nappies", "screen time", "sibling fights", "homework battles",
            "a newborn's feeding schedule", "tantrums in the supermarket",
            "teaching my kid to ride a bike",
        ),
        (
            "How do I deal with {s}?", "What do experts recommend for {s}?",
            "Any tips for {s}?", "I'm exhausted by {s}, what works?",
            "what's the best approach to {s}", "Is it normal to struggle this much with {s}?",
        ),
        ("I'm a first-time parent.", "We've tried everything and nothing works."),
    ),
    _Topic(
        "pets",
        (
            "my cat", "my dog", "my hamster", "my goldfish", "a new puppy", "my rabbit",
            "my parrot", "an older dog", "a rescue cat", "my guinea pig", "my tortoise",
            "a kitten",
        ),
        (
            "What should I feed {s}?", "How often should {s} see a vet?",
            "Why is {s} acting weird today?", "How do I stop {s} from chewing everything?",
            "What's a good name for {s}?", "Is it normal that {s} sleeps all day?",
            "how do i keep {s} entertained while i'm out", "Can {s} eat strawberries?",
        ),
        ("We adopted her last month.", "My neighbour says I'm doing it all wrong."),
    ),
    _Topic(
        "gardening",
        (
            "tomatoes", "roses", "basil", "lemon trees", "succulents", "orchids", "strawberries",
            "hydrangeas", "lavender", "fiddle leaf figs", "potatoes", "sunflowers",
            "blueberry bushes", "chilli peppers", "tulips",
        ),
        (
            "How often should I water {s}?", "When's the best time to plant {s}?",
            "Why are the leaves on my {s} turning yellow?", "Can I grow {s} on a balcony?",
            "What's eating my {s}?", "how do you keep {s} alive in winter",
            "Do {s} need full sun?", "Give me a beginner's guide to growing {s}.",
        ),
        ("I just moved into a place with a small garden.", "Everything I plant seems to die."),
    ),
    _Topic(
        "home_repair",
        (
            "a leaky faucet", "a squeaky door", "a cracked tile", "a running toilet",
            "a clogged drain", "peeling paint", "a wobbly table", "a hole in the drywall",
            "a drafty window", "a tripped breaker", "a sticking drawer", "mould in the shower",
        ),
        (
            "How do I fix {s}?", "Can I repair {s} myself or do I need a professional?",
            "What tools do I need for {s}?", "fastest way to fix {s}?",
            "How much does it cost to fix {s}?", "Walk me through fixing {s} step by step.",
        ),
        ("My landlord never answers.", "I'm not very handy but I want to try."),
    ),
    _Topic(
        "interior_design",
        (
            "a small living room", "a north-facing bedroom", "a rental kitchen",
            "a narrow hallway", "a kids' playroom", "a tiny bathroom", "an open-plan loft",
            "a studio flat", "a guest room",
        ),
        (
            "How should I decorate {s}?", "What paint colour works for {s}?",
            "Give me layout ideas for {s}.", "how do i make {s} look bigger",
            "Which plants would suit {s}?", "Cheap ways to refresh {s}?",
        ),
        ("We're on a tight budget.", "Everything in there is beige right now."),
    ),
    _Topic(
        "cars",
        (
            "a Toyota Corolla", "a used Honda Civic", "a Ford F-150", "an electric car",
            "a hybrid SUV", "a Volkswagen Golf", "a Subaru Outback", "a Mini Cooper",
            "a Jeep Wrangler", "a second-hand BMW", "a Mazda MX-5", "a Volvo estate",
        ),
        (
            "Is {s} reliable?", "How often should I change the oil in {s}?",
            "What's a fair price for {s}?", "Should I buy or lease {s}?",
            "Why is {s} making a clicking noise when I turn?", "Is {s} good in snow?",
            "what's the insurance like on {s}", "Compare {s} with a Kia Sportage for me.",
        ),
        ("My old car finally died.", "The dealer is pressuring me to decide by Friday."),
    ),
    _Topic(
        "fashion",
        (
            "a black-tie wedding", "an interview at a law firm", "a beach holiday", "a winter trip to Berlin",
            "a summer festival", "a funeral", "a casual Friday", "a graduation ceremony",
            "a rooftop party", "a christening",
        ),
        (
            "What should I wear to {s}?", "Does navy go with brown for {s}?",
            "Put together an outfit for {s}.", "what shoes for {s}",
            "Is a hoodie too casual for {s}?", "Help me pick colours for {s}.",
        ),
        ("I have nothing to wear.", "The dress code on the invitation is confusing."),
    ),
    _Topic(
        "video_games",
        (
            "Elden Ring", "Minecraft", "Zelda: Tears of the Kingdom", "Fortnite",
            "Stardew Valley", "The Witcher 3", "Baldur's Gate 3", "Animal Crossing", "Dark Souls",
            "Hollow Knight", "Overwatch", "Red Dead Redemption 2", "Tetris",
        ),
        (
            "How do I beat the final boss in {s}?", "Is {s} worth buying in the sale?",
            "What's the best build for {s}?", "Give me some beginner tips for {s}.",
            "How long does it take to finish {s}?", "Any secrets in {s} most people miss?",
            "Is {s} better on PC or console?", "games like {s}?",
        ),
        ("I've been stuck for two days.", "My brother keeps beating me."),
    ),
    _Topic(
        "board_games",
        (
            "chess", "poker", "Monopoly", "Catan", "bridge", "Scrabble", "sudoku",
            "the Rubik's cube", "backgammon", "the game of Go", "crossword puzzles", "mahjong",
        ),
        (
            "How do I get better at {s}?", "Explain the rules of {s}.",
            "What's a good strategy for {s}?", "Teach me a trick for {s}.",
            "Who is the best {s} player in the world?", "is {s} mostly luck or skill",
            "How do I win at {s} against my uncle?",
        ),
        ("It's family games night on Sunday.", "I always lose and it's getting embarrassing."),
    ),
    _Topic(
        "math_homework",
        (
            "2x + 5 = 17", "the derivative of x^3 sin x", "the integral of 1/x",
            "x^2 - 5x + 6 = 0", "the area of a circle with radius 7", "15% of 240",
            "the square root of 529", "the probability of rolling two sixes",
            "3/4 divided by 2/5", "the slope between (1, 2) and (4, 11)",
            "the sum of the first 100 integers", "log base 2 of 64",
        ),
        (
            "Work out {s} for me.", "What is {s}?", "Can you show the steps for {s}?",
            "Help with my homework: {s}.", "{s} - what's the answer?",
            "My teacher gave us {s} and I'm stuck.", "quick, what's {s}",
            "Explain how to work out {s}.",
        ),
        ("It's due tomorrow morning.", "I missed the class where they explained this."),
    ),
    _Topic(
        "science_homework",
        (
            "photosynthesis", "Newton's third law", "the Krebs cycle", "covalent bonds",
            "mitosis", "the periodic table", "DNA replication", "Ohm's law", "kinetic energy",
            "the water cycle", "natural selection", "acid rain", "plate tectonics",
        ),
        (
            "Explain {s} for my exam tomorrow.", "Write my homework answer on {s}.",
            "What is {s} in simple words?", "Can you make flashcards about {s}?",
            "Give me a mnemonic to remember {s}.", "i dont get {s} at all, help",
            "Write a 300-word essay on {s}.",
        ),
        ("My teacher explains things way too fast.", "I'm revising for my finals."),
    ),
    _Topic(
        "poems",
        (
            "my cat", "autumn leaves", "the ocean", "my grandmother's kitchen", "a rainy Monday",
            "falling in love", "the moon", "morning coffee", "my best friend's birthday",
            "a lighthouse", "spring", "a lost sock", "the city at night",
        ),
        (
            "Write me a poem about {s}.", "Can you write a haiku about {s}?",
            "Compose a sonnet about {s}.", "I need a limerick about {s}.",
            "write a short rhyming poem about {s} pls",
            "Give me four lines of free verse about {s}.",
        ),
        ("It's for a card I'm making.", "I want to surprise my wife."),
    ),
    _Topic(
        "jokes",
        (
            "dentists", "penguins", "accountants", "Mondays", "cats", "pirates", "dads", "cheese",
            "astronauts", "vegetables", "plumbers", "giraffes", "librarians",
        ),
        (
            "Tell me a joke about {s}.", "Know any good jokes about {s}?",
            "Give me a pun about {s}.", "What's the funniest joke you know about {s}?",
            "make me laugh with a joke about {s}", "I need a clean joke about {s} for a speech.",
        ),
        ("It's been a long day.", "I'm giving a toast at a wedding."),
    ),
    _Topic(
        "stories",
        (
            "a dragon who is afraid of fire", "a detective in Venice", "a haunted lighthouse",
            "two kids lost in a museum", "a talking tree", "a pirate who can't swim",
            "a knight and a lazy horse", "a time-travelling grandmother", "a bakery on the moon",
            "a cat who runs a hotel",
        ),
        (
            "Write a short story about {s}.", "Tell me a bedtime story about {s}.",
            "Can you make up a story about {s} for my daughter?",
            "Write the first chapter of a novel about {s}.",
            "I need a 200-word story about {s}.", "story about {s} pls",
        ),
        ("My kids won't go to sleep.", "I'm entering a writing competition."),
    ),
    _Topic(
        "translation",
        (
            "good morning", "where is the bus station", "I love you", "thank you very much",
            "happy birthday", "the bill, please", "nice to meet you", "I'm allergic to peanuts",
            "how much does this cost", "see you tomorrow", "excuse me", "cheers",
        ),
        (
            "How do you say '{s}' in Japanese?", "Translate '{s}' into French.",
            "What's '{s}' in Italian?", "translate {s} to german",
            "How would a native speaker say '{s}' in Spanish?",
            "Can you translate '{s}' into Korean for me?", "What is the Portuguese for '{s}'?",
        ),
        ("I'm going abroad next week.", "I want to impress my girlfriend's family."),
    ),
    _Topic(
        "language_learning",
        (
            "Spanish", "Mandarin", "Japanese", "German", "Arabic", "Italian", "Korean", "Russian",
            "Portuguese", "Swahili", "Dutch", "Greek",
        ),
        (
            "What's the fastest way to learn {s}?", "Is {s} hard for English speakers?",
            "How long does it take to become fluent in {s}?",
            "Recommend an app for learning {s}.", "Teach me five basic phrases in {s}.",
            "tips for learning {s} grammar?", "Can you quiz me on {s} vocabulary?",
        ),
        ("I'm moving abroad next year.", "I tried at school and gave up."),
    ),
    _Topic(
        "other_programming",
        (
            "COBOL", "Fortran", "Excel VBA", "Visual Basic 6", "PHP", "Perl", "Pascal", "Delphi",
            "Haskell", "Lisp", "assembly", "ActionScript", "Prolog", "a TI-84 calculator",
        ),
        (
            "Write a {s} program that prints a multiplication table.",
            "How do I read a text file in {s}?", "Can you write a calculator app in {s}?",
            "Help me debug my {s} homework.", "what's the syntax for a loop in {s}",
            "Is {s} still worth learning?", "Write a game of tic-tac-toe in {s}.",
        ),
        ("My uncle's shop still runs on this.", "This is for an old school assignment."),
    ),
    _Topic(
        "office_software",
        (
            "Excel pivot tables", "a WordPress blog", "CSS flexbox", "PowerPoint animations",
            "Google Sheets formulas", "my home Wi-Fi router", "a Shopify store",
            "Photoshop layers", "mail merge in Word", "my smart TV",
        ),
        (
            "How do I use {s}?", "Why isn't {s} working?", "Can you help me set up {s}?",
            "quick tutorial on {s}?", "Give me a step-by-step guide to {s}.",
            "what's the trick with {s}",
        ),
        ("My boss asked me to sort this out by Monday.", "I'm not a computer person."),
    ),
    _Topic(
        "philosophy",
        (
            "free will", "the meaning of life", "consciousness", "the trolley problem",
            "stoicism", "existentialism", "whether morality is objective", "the ship of Theseus",
            "nihilism", "Plato's cave", "personal identity", "the problem of evil",
        ),
        (
            "What do you think about {s}?", "Explain {s} in plain English.",
            "What would Nietzsche say about {s}?", "Is there a real answer to {s}?",
            "Give me the best arguments on both sides of {s}.", "whats ur take on {s}",
            "Recommend a book about {s}.",
        ),
        ("I've been lying awake thinking about this.", "We argued about it at dinner."),
    ),
    _Topic(
        "politics",
        (
            "the next election", "immigration policy", "the minimum wage", "gun control",
            "the president", "Brexit", "universal basic income", "rent control", "term limits",
            "the new tax plan", "the prime minister", "lowering the voting age",
        ),
        (
            "What's your opinion on {s}?", "Which party is right about {s}?",
            "Is {s} a good idea?", "Explain both sides of the debate on {s}.",
            "who's winning the argument over {s}", "Write a persuasive speech about {s}.",
            "Why are people so angry about {s}?",
        ),
        ("My uncle won't stop talking about it.", "I don't follow the news much."),
    ),
    _Topic(
        "religion",
        (
            "the afterlife", "reincarnation", "the Bible", "Ramadan", "Buddhism", "the Quran",
            "Hinduism", "the existence of God", "Lent", "karma", "meditation retreats",
            "Judaism",
        ),
        (
            "What do different religions say about {s}?", "Can you explain {s} to me?",
            "Is {s} real?", "What's the history behind {s}?", "tell me about {s}",
            "Which religion has the best view on {s}?",
            "Help me understand {s} before I visit my in-laws.",
        ),
        ("I grew up without any religion.", "My new neighbours are very devout."),
    ),
    _Topic(
        "shopping",
        (
            "robot vacuum", "pair of running shoes", "winter coat", "mattress",
            "noise-cancelling headphones", "coffee machine", "stroller", "sofa bed",
            "air fryer", "suitcase", "standing lamp", "electric toothbrush",
        ),
        (
            "Which {s} should I buy?", "What's the best {s} under $200?",
            "Where can I find a good {s} on sale?", "Is a premium {s} worth the extra money?",
            "best {s} this year?", "Recommend some {s} options for a small flat.",
            "Compare the top three {s} brands for me.",
        ),
        ("My old one just broke.", "Black Friday is coming up."),
    ),
    _Topic(
        "gifts_holidays",
        (
            "my dad's 60th birthday", "Mother's Day", "a Secret Santa exchange", "Valentine's Day",
            "my sister's wedding", "a housewarming", "Halloween", "Thanksgiving dinner",
            "New Year's Eve", "a baby shower", "Father's Day", "a retirement party",
        ),
        (
            "Any gift ideas for {s}?", "How should I celebrate {s} this year?",
            "Plan {s} for me on a budget.", "What are some fun ideas for {s}?",
            "gift for {s} under 50 bucks?", "How do I decorate for {s}?",
        ),
        ("I always leave these things to the last minute.", "Money is a bit tight this year."),
    ),
    _Topic(
        "legal",
        (
            "my landlord keeping my deposit", "a parking ticket", "a noisy neighbour",
            "writing a will", "a speeding fine", "getting divorced",
            "a dispute with a builder", "small claims court", "a dog bite", "jury duty",
        ),
        (
            "What are my rights regarding {s}?", "Can you give me legal advice about {s}?",
            "Do I need a lawyer for {s}?", "What should I do about {s}?",
            "Is there a way to deal with {s} without going to court?", "what's the law on {s}",
            "Write a letter about {s} for me.",
        ),
        ("I really can't afford a solicitor.", "This has been stressing me out for weeks."),
    ),
    _Topic(
        "careers",
        (
            "a salary negotiation", "an interview at a bank", "a career change into nursing",
            "asking for a raise", "handing in my notice", "a cover letter for a barista position",
            "going back to university at 40", "becoming a pilot", "starting a bakery",
            "a networking event",
        ),
        (
            "How do I prepare for {s}?", "Any advice on {s}?",
            "What mistakes should I avoid with {s}?", "Is {s} a good idea in this economy?",
            "help me with {s}", "What would you do about {s} in my position?",
        ),
        ("I've been unhappy at work for a while.", "My friend just did the same thing."),
    ),
    _Topic(
        "animals",
        (
            "octopuses", "elephants", "honeybees", "sharks", "owls", "dolphins", "penguins",
            "wolves", "hummingbirds", "crows", "jellyfish", "sloths", "axolotls",
        ),
        (
            "How long do {s} live?", "What do {s} eat in the wild?",
            "Are {s} dangerous to humans?", "Tell me three weird facts about {s}.",
            "how do {s} sleep", "How smart are {s} really?", "Can {s} recognise faces?",
        ),
        ("We went to the aquarium today.", "My son has a school project on this."),
    ),
    _Topic(
        "art",
        (
            "the Mona Lisa", "The Starry Night", "Guernica", "The Scream",
            "the Sistine Chapel ceiling", "Girl with a Pearl Earring",
            "The Persistence of Memory", "The Birth of Venus", "Water Lilies", "The Night Watch",
        ),
        (
            "Why is {s} so famous?", "Who painted {s}?", "What's the hidden meaning in {s}?",
            "Where can I see {s} in person?", "How much would {s} be worth today?",
            "describe {s} to me",
        ),
        ("I'm visiting a museum next month.", "My art teacher mentioned it today."),
    ),
    _Topic(
        "hobbies",
        (
            "knitting", "pottery", "watercolour painting", "woodworking", "film photography",
            "calligraphy", "embroidery", "origami", "birdwatching", "candle making",
            "beekeeping", "fishing",
        ),
        (
            "How do I get started with {s}?", "What supplies do I need for {s}?",
            "Is {s} an expensive hobby?", "beginner project ideas for {s}?",
            "How long until I'm decent at {s}?", "Recommend a YouTube channel for {s}.",
        ),
        ("I need something to do that isn't screens.", "My therapist suggested a hobby."),
    ),
    _Topic(
        "trivia",
        (
            "the tallest building in the world", "the longest river on Earth",
            "the oldest university in Europe", "the most spoken language",
            "the smallest country", "the deepest lake", "the fastest land animal",
            "the most expensive painting ever sold", "the busiest airport",
            "the largest desert", "the hottest chilli pepper",
        ),
        (
            "What is {s}?", "Do you know {s}?", "quick trivia: {s}?",
            "Settle a bet: what's {s}?", "Name {s}.", "Which one is {s}? I always forget.",
        ),
        ("It's quiz night at the pub.", "My coworker swears he knows the answer."),
    ),
    _Topic(
        "astrology",
        (
            "Leo", "Scorpio", "Gemini", "Virgo", "Aquarius", "Pisces", "Capricorn", "Aries",
            "Taurus", "Libra", "Sagittarius",
        ),
        (
            "What does this week's horoscope say for {s}?", "Are {s} and Cancer compatible?",
            "What are {s} people like?", "Is this a lucky month for {s}?",
            "{s} horoscope today?", "Why do people say {s} is the worst sign?",
        ),
        ("My new boyfriend is really into astrology.", "I read my horoscope every morning."),
    ),
)


TOPICS: tuple[str, ...] = tuple(topic.name for topic in _TOPICS)

# Put in front of a question, so the model sees how people really open a chat.
_OPENERS: tuple[str, ...] = (
    "Hey, ", "Quick question: ", "Off topic, but ", "Random question, ", "Hi there! ",
    "Sorry, this is unrelated, but ", "Totally different subject: ", "Not work related, but ",
    "Can I ask you something? ", "Before I forget, ", "Honest answer please: ", "ok so ",
    "Help! ", "Hello. ", "Just wondering, ",
)

# Put after a question.
_CLOSERS: tuple[str, ...] = (
    " Thanks!", " Thanks in advance.", " Just curious.", " Asking for a friend.",
    " Keep it short.", " Be honest.", " I'd really appreciate it.", " No rush.", " lol",
    " Please explain simply.", " Bullet points are fine.", " I need it for tonight.",
)

# Context sentences that fit any topic, for long, chatty questions.
_GENERIC_CONTEXTS: tuple[str, ...] = (
    "I know this isn't really what you're for, but I'm curious.",
    "This came up at lunch today.", "I've been wondering about this all week.",
    "My colleague and I were arguing about it.", "Nobody else in the team knows.",
)
# fmt: on

_TYPO_WORD = re.compile(r"[A-Za-z]{5,}")
_NORMALISE = re.compile(r"[^a-z0-9]+")


class OffTopicQuestion(NamedTuple):
    """A generated question and the topic it came from (for coverage statistics and tests)."""

    topic: str
    text: str


def off_topic_questions(count: int, seed: int) -> list[str]:
    """`count` distinct off-topic questions, deterministic for a seed."""
    return [question.text for question in labelled_off_topic_questions(count, seed)]


def labelled_off_topic_questions(count: int, seed: int) -> list[OffTopicQuestion]:
    """`count` distinct off-topic questions with their topics, deterministic for a seed.

    Topics are drawn uniformly, so even a small count covers many areas; distinctness is judged
    after lowercasing and dropping punctuation, so two rows never differ only in style.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(seed)
    questions: list[OffTopicQuestion] = []
    seen: set[str] = set()
    for _ in range(count * _ATTEMPTS_PER_QUESTION):
        if len(questions) == count:
            break
        question = _compose(rng)
        key = _NORMALISE.sub(" ", question.text.lower()).strip()
        if key in seen or not MIN_WORDS <= len(question.text.split()) <= MAX_WORDS:
            continue
        seen.add(key)
        questions.append(question)
    if len(questions) < count:
        raise ValueError(f"cannot compose {count} distinct off-topic questions (got {len(questions)})")
    return questions


def _compose(rng: random.Random) -> OffTopicQuestion:
    """One question: a topic's template and subject, then optional context, opener, closer, style."""
    topic = rng.choice(_TOPICS)
    question = rng.choice(topic.templates).format(s=rng.choice(topic.subjects))
    if rng.random() < 0.3:
        if rng.random() < 0.35:
            contexts = [rng.choice(_GENERIC_CONTEXTS), rng.choice(topic.contexts)]
        else:
            contexts = [rng.choice(topic.contexts + _GENERIC_CONTEXTS)]
        question = " ".join([*contexts, _capitalise(question)])
    if rng.random() < 0.25:
        question = _with_opener(rng.choice(_OPENERS), question)
    if question.endswith(("?", ".", "!")) and rng.random() < 0.2:
        question += rng.choice(_CLOSERS)
    style = rng.random()
    if style < 0.12:
        question = question.lower()
    elif style < 0.2:
        question = question.rstrip("?.!")
    if rng.random() < 0.12:
        question = _with_typo(rng, question)
    return OffTopicQuestion(topic.name, question)


def _capitalise(text: str) -> str:
    """Upper-case the first letter, as a sentence after a context sentence needs."""
    return text[0].upper() + text[1:]


def _with_opener(opener: str, question: str) -> str:
    """Join an opener; unless it ends a sentence, the question goes on in lower case (but "I" stays)."""
    if not opener.endswith((". ", "! ", "? ")) and not re.match(r"I\b", question):
        question = question[0].lower() + question[1:]
    return opener + question


def _with_typo(rng: random.Random, question: str) -> str:
    """Misspell one longer word (swap, drop or double a letter): real users make typos."""
    words = list(_TYPO_WORD.finditer(question))
    if not words:
        return question
    match = rng.choice(words)
    word = match.group()
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        typo = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    elif kind == 1:
        typo = word[:i] + word[i + 1 :]
    else:
        typo = word[:i] + word[i] + word[i:]
    return question[: match.start()] + typo + question[match.end() :]
